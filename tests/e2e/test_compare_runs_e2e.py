"""Compare runs in real Chromium: queue a tiny study from the form, watch it fill in live, screenshot the result."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHART = "[data-testid='stPlotlyChart']"


def fill(page: Page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


@pytest.mark.e2e
def test_queue_a_study_and_compare_its_runs(page: Page, app_url: str, artifacts):
    page.goto(f"{app_url}/runs")
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible(timeout=120_000)
    expect(page.locator(IDLE)).to_be_attached(timeout=120_000)
    for label, value in (("Seeds", "1"), ("Max steps", "1"), ("Train rows", "32"), ("Validation rows", "16"),
                         ("Test rows", "16")):
        fill(page, label, value)
    page.get_by_role("button", name="Queue the study").click()
    expect(page).to_have_url(re.compile(r"study=1"), timeout=120_000)
    # the fragment refreshes every 2 s while the 6 runs and the base evaluation go on, then stops
    bars = page.locator(CHART).filter(has_text="by method").first
    expect(bars.locator(".js-plotly-plot")).to_be_visible(timeout=300_000)
    expect(page.get_by_text("6 done / 6 planned").first).to_be_visible(timeout=400_000)
    expect(page.locator(CHART)).to_have_count(3, timeout=60_000)
    pareto = page.locator(CHART).filter(has_text="Pareto front").first
    expect(pareto).to_contain_text("Base: linear probe")
    expect(page.get_by_test_id("stPageLink-NavLink")).to_have_count(1)
    expect(page.get_by_test_id("stPageLink-NavLink")).to_have_attribute("href", re.compile(r"cs_runs=2-study1-lora-s0"))   # job 1 is the base evaluation
    expect(page.locator(IDLE)).to_be_attached(timeout=60_000)
    page.set_viewport_size({"width": 1400, "height": 2000})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts / "e2e-compare-runs.png"))
