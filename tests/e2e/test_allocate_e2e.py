"""Allocate page in real Chromium: hand edits typed into the table stick after slider moves and a reset, and a
refresh restores them from the URL."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
TABLE = "[data-testid='stDataFrame']"
ROW_PX, HEADER_PX = 35, 35             # Streamlit's data_editor row and header heights


def wait_idle(page: Page, timeout: float = 180_000) -> None:
    page.wait_for_timeout(500)
    expect(page.locator(IDLE)).to_be_attached(timeout=timeout)


def total(page: Page) -> tuple[int, int]:
    """The "Σ experts / budget" tile as (Σ experts, budget)."""
    tile = page.locator("[data-testid='stMetric']").filter(has_text="Σ experts / budget")
    shown, budget = tile.locator("[data-testid='stMetricValue']").inner_text().split("/")
    return int(shown), int(budget)


def shown(page: Page, layer: int) -> int:
    """The experts cell of a layer as the table shows it (its accessible copy; experts is the third column)."""
    return int(page.locator(TABLE).first.locator(f"#glide-cell-2-{layer}").inner_text())


def type_into(page: Page, layer: int, value: int) -> None:
    """Double-click the layer's experts cell, type the value, press Enter: as a person does it. The clicks and
    keys are paced like a hand's (tens of ms apart): Playwright's instantaneous dblclick (both clicks in the same
    instant, which no hand makes) can open the cell editor without focus in Streamlit's grid once a table was
    replaced, and then the typed value goes nowhere."""
    table = page.locator(TABLE).first
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    x, y = box["x"] + box["width"] * 5 / 6, box["y"] + HEADER_PX + ROW_PX * layer + ROW_PX / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.wait_for_timeout(40)
    page.mouse.up()
    page.wait_for_timeout(80)
    page.mouse.down(click_count=2)
    page.wait_for_timeout(40)
    page.mouse.up(click_count=2)
    expect(page.locator("#portal input.gdg-input")).to_be_visible()
    page.wait_for_timeout(100)
    page.keyboard.type(str(value), delay=60)
    page.keyboard.press("Enter")
    wait_idle(page)


def edit_sticks(page: Page, layer: int, value: int) -> None:
    """Type a value into a layer's cell; Σ, the cell and the URL follow."""
    before, budget = total(page)
    old = shown(page, layer)
    type_into(page, layer, value)
    assert total(page) == (before - old + value, budget), f"layer {layer}: {old} → {value} was dropped"
    assert shown(page, layer) == value
    expect(page).to_have_url(re.compile(rf"edits=[^&]*{layer}(%3A|:){value}"))


def move_budget(page: Page, key: str) -> None:
    slider = page.get_by_role("slider").first
    slider.focus()
    slider.press(key)
    wait_idle(page)


@pytest.mark.e2e
def test_hand_edits_stick_after_slider_moves_and_reset_and_survive_a_refresh(page: Page, app_url: str, artifacts):
    page.goto(f"{app_url}/allocate")
    expect(page.get_by_role("heading", name="Allocate experts")).to_be_visible(timeout=180_000)
    expect(page.locator(TABLE).first).to_be_visible(timeout=180_000)
    wait_idle(page)
    assert total(page) == (30, 30)

    edit_sticks(page, 0, 9)
    move_budget(page, "ArrowRight")                        # a new budget: the hand edit is dropped, and said so
    expect(page.get_by_text("Hand edits dropped").first).to_be_visible()
    assert total(page) == (31, 31)
    expect(page).not_to_have_url(re.compile("edits="))
    edit_sticks(page, 3, 9)                                # … and the next edit sticks
    edit_sticks(page, 1, 8)
    move_budget(page, "ArrowLeft")
    edit_sticks(page, 4, 9)

    page.get_by_role("button", name="Reset hand edits").click()
    wait_idle(page)
    assert total(page) == (30, 30)
    expect(page).not_to_have_url(re.compile("edits="))
    edit_sticks(page, 2, 12)
    edit_sticks(page, 5, 1)
    expected = total(page)
    page.screenshot(path=str(artifacts / "e2e-allocate-edited.png"), full_page=True)

    # a refresh restores the hand edits from the URL (table, Σ, warning) and they stay editable
    page.reload()
    expect(page.locator(TABLE).first).to_be_visible(timeout=180_000)
    wait_idle(page)
    assert total(page) == expected and shown(page, 2) == 12 and shown(page, 5) == 1
    expect(page.get_by_text("manual (edited from AlphaLoRA)").first).to_be_visible()
    edit_sticks(page, 0, 7)
    expect(page).to_have_url(re.compile(r"edits=0(%3A|:)7(%2C|,)2(%3A|:)12(%2C|,)5(%3A|:)1"))
    page.screenshot(path=str(artifacts / "e2e-allocate-refreshed.png"), full_page=True)
