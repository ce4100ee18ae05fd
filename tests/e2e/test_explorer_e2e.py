"""The layer-quality explorer in real Chromium: overview α chart, pick a layer, its ESD plots, the URL restores the view."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHART = "[data-testid='stPlotlyChart']"


def wait_idle(page: Page, timeout: float = 120_000) -> None:
    expect(page.locator(IDLE)).to_be_attached(timeout=timeout)


def selectbox(page: Page, label: str):
    return page.locator("[data-testid='stSelectbox']").filter(has=page.get_by_text(label, exact=True))


@pytest.mark.e2e
def test_overview_then_layer_detail(page: Page, app_url: str, artifacts):
    page.goto(app_url)
    # the default model is analysed on first load (a progress bar streams), then the α chart draws
    alpha_chart = page.locator(CHART).filter(has_text="per layer").first
    expect(alpha_chart.locator(".js-plotly-plot")).to_be_visible(timeout=180_000)
    expect(page.get_by_role("heading", name="Layer quality overview")).to_be_visible()
    expect(alpha_chart).to_contain_text("over-trained")
    wait_idle(page)
    expect(page).to_have_url(re.compile(r"model=all-MiniLM-L6-v2"))
    page.screenshot(path=str(artifacts / "e2e-overview.png"))

    page.locator("[data-testid='stSidebarNavLink']").filter(has_text="Layer detail").click()
    expect(page.get_by_role("heading", name="Layer detail")).to_be_visible()
    wait_idle(page)
    selectbox(page, "Layer").click()
    page.get_by_role("option", name="layer 2", exact=True).click()
    expect(page).to_have_url(re.compile(r"/layer\?.*layer=2"))
    header = page.locator("[data-testid='stMarkdownContainer']").filter(has_text="encoder.layer.2.attention.self.query")
    expect(header.first).to_be_visible()
    esd = page.locator(CHART).filter(has_text="ESD, log-log").first
    expect(esd.locator(".js-plotly-plot")).to_be_visible()
    expect(esd).to_contain_text("power law, α =")
    wait_idle(page)
    page.screenshot(path=str(artifacts / "e2e-layer.png"))

    # a refresh (or a shared link) restores the view from the URL
    page.reload()
    expect(page.get_by_role("combobox", name="Layer")).to_have_value("layer 2", timeout=60_000)
    expect(page.locator(CHART).filter(has_text="ESD, log-log").first.locator(".js-plotly-plot")).to_be_visible()


@pytest.mark.e2e
def test_clicking_a_layer_point_opens_its_detail(page: Page, app_url: str, artifacts):
    page.goto(f"{app_url}/?model=all-MiniLM-L6-v2")
    alpha_chart = page.locator(CHART).filter(has_text="per layer").first
    expect(alpha_chart.locator(".js-plotly-plot")).to_be_visible(timeout=180_000)
    wait_idle(page)
    # the per-layer score is the last trace; its 4th point is layer 3
    point = alpha_chart.locator(".scatterlayer .trace").last.locator(".points path").nth(3)
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    expect(page.get_by_role("heading", name="Layer detail")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/layer\?.*layer=3"))
    expect(page.get_by_role("combobox", name="Layer")).to_have_value("layer 3")
    wait_idle(page)
    page.screenshot(path=str(artifacts / "e2e-click-layer.png"))
