"""Links and refreshes in real Chromium: every page's own URL, an unknown path said, the Train form kept."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def wait_idle(page: Page, timeout: float = 180_000) -> None:
    page.wait_for_timeout(500)
    expect(page.locator(IDLE)).to_be_attached(timeout=timeout)


def open_form(page: Page) -> None:
    """Unfold the Train page's New-run form (folded when runs exist, e.g. from the other e2e tests)."""
    box = page.get_by_label("Max steps", exact=True)
    if not box.is_visible():
        page.get_by_text("New run", exact=True).click()
        expect(box).to_be_visible(timeout=60_000)
        wait_idle(page)


def expect_form_kept(page: Page) -> None:
    """The Train page shows the New-run form with the values the test typed (30 steps, all rows, 'thirty')."""
    expect(page.get_by_role("heading", name="Train")).to_be_visible(timeout=60_000)
    wait_idle(page)
    open_form(page)
    expect(page.get_by_label("Max steps", exact=True)).to_have_value("30", timeout=60_000)
    expect(page.get_by_label("Train rows", exact=True)).to_have_value("")
    expect(page.get_by_label("Run name", exact=True)).to_have_value("thirty")


def fill(page: Page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")
    wait_idle(page)


@pytest.mark.e2e
def test_page_urls_unknown_paths_and_a_refreshed_train_form(page: Page, app_url: str, artifacts):
    # the first page's own path opens it (at "/", the link's settings kept), without "Page not found"
    page.goto(f"{app_url}/overview?metric=stable_rank")
    expect(page.get_by_role("heading", name="Layer quality overview")).to_be_visible(timeout=180_000)
    wait_idle(page)
    expect(page).to_have_url(re.compile(r"^http://[^/]+/\?.*metric=stable_rank"))
    expect(page.get_by_role("combobox", name="Heatmap metric")).to_have_value(re.compile("stable rank"))
    expect(page.get_by_text("Page not found")).to_have_count(0)

    # a path that names no page shows the Overview and says so
    page.goto(f"{app_url}/doesnotexist")
    expect(page.get_by_text("There is no page /doesnotexist: this is the Overview.")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="Layer quality overview")).to_be_visible()
    wait_idle(page)
    page.screenshot(path=str(artifacts / "e2e-unknown-path.png"))

    # the New-run form keeps its values across a refresh and a visit to another page
    page.goto(f"{app_url}/train")
    expect(page.get_by_role("heading", name="Train")).to_be_visible(timeout=60_000)
    wait_idle(page)
    open_form(page)
    fill(page, "Max steps", "30")
    fill(page, "Train rows", "")                                      # emptied: all rows (not the minimum, 1)
    fill(page, "Run name", "thirty")
    expect(page).to_have_url(re.compile(r"new_max_steps=30.*new_max_train_rows=none.*new_name=thirty"))
    page.reload()
    expect_form_kept(page)
    wait_idle(page)
    page.screenshot(path=str(artifacts / "e2e-train-form-refreshed.png"))
    page.locator("[data-testid='stSidebarNavLink']").filter(has_text="Layer detail").click()
    expect(page.get_by_role("heading", name="Layer detail")).to_be_visible()
    wait_idle(page)
    expect(page).not_to_have_url(re.compile("new_"))                  # the form's values are the Train page's own
    page.locator("[data-testid='stSidebarNavLink']").filter(has_text="Train").click()
    expect_form_kept(page)
