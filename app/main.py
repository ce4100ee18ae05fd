"""Spectrascope's Streamlit entry: page registry, the shared sidebar model picker, and the URL view sync.

How pages are registered (for whoever adds one):
  * A page is ONE script file in app/ (e.g. app/page_allocate.py) that Streamlit executes on every rerun (as
    __main__). Convention: a one-line docstring, `from app import common, charts`, helpers and a main(), and
    at the bottom `if __name__ == "__main__": main()` (so a benchmark/test can import it without running it).
    `common.current_analysis()` gives the sidebar model's AnalysisResult (or None after showing the error);
    `common.view(...)` / `common.bound_selectbox(...)` keep the page's settings in the URL.
  * Add one line to PAGES below: (file, title, icon, url_path). A file that does not exist yet is left out,
    so the list may name pages other developers have not written yet.
  * Tests: AppTest.from_file("app/main.py").run(); at.switch_page("page_x.py").run().
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `streamlit run app/main.py` puts app/ on sys.path, not the repository root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import common  # noqa: E402

HERE = Path(__file__).resolve().parent
# The browser tab's icon, shipped with the app: Streamlit turns a local SVG into a data: URL, whereas a
# ":material/…:" page icon makes the browser fetch it from a font CDN (nothing offline).
ICON = ROOT / "assets" / "icon.svg"
PAGES = [  # (file in app/, title, icon, url path); the first existing one is the default page
    ("page_overview.py", "Overview", ":material/monitoring:", "overview"),
    ("page_layer.py", "Layer detail", ":material/stacked_line_chart:", "layer"),
    ("page_compare_models.py", "Compare models", ":material/compare_arrows:", "compare"),
    ("page_compare_spectra.py", "Compare spectra", ":material/difference:", "spectra"),
    ("page_allocate.py", "Allocate experts", ":material/account_tree:", "allocate"),
    ("page_train.py", "Train", ":material/model_training:", "train"),
    ("page_compare_runs.py", "Compare runs", ":material/leaderboard:", "runs"),
]


def build_pages() -> list:
    """st.Page objects for the page files that exist."""
    pages = []
    for file, title, icon, url in PAGES:
        if (HERE / file).is_file():
            pages.append(st.Page(file, title=title, icon=icon, url_path=url, default=not pages))
    return pages


st.set_page_config(page_title="Spectrascope", page_icon=str(ICON), layout="wide")
st.set_option("client.toolbarMode", "minimal")      # a local workbench: no "Deploy" button
page = st.navigation(build_pages())
common.sidebar_model_picker()
common.sync_query_params()
page.run()
common.sync_query_params()
