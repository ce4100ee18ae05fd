"""Spectrascope's Streamlit entry: page registry, the shared sidebar model picker, and the URL view sync.

How pages are registered (for whoever adds one):
  * A page is ONE script file in app/ (e.g. app/page_allocate.py) that Streamlit executes on every rerun (as
    __main__). Convention: a one-line docstring, `from app import common, charts`, helpers and a main(), and
    at the bottom `if __name__ == "__main__": main()` (so a benchmark/test can import it without running it).
    `common.current_analysis()` gives the sidebar model's AnalysisResult (or None after showing the error);
    `common.register_view_keys(...)` (seeded from the URL by `common.seed_view`), `common.view(...)` and the
    widgets of `common.bound(...)` / `common.bound_selectbox(...)` keep the page's settings in the URL;
    `common.url_fallback(...)` says (above the page) when a link's value cannot be shown.
  * Add one line to PAGES below: (file, title, icon, url_path); every file must exist (a test checks). The first
    page is served at "/" and its own path (/overview) leads there; a path that names no page shows the first
    page and says so. A page's URL carries the shared view names (common.SHARED_KEYS) and its own.
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
    """st.Page objects of PAGES; the first is the default, served at "/" (a missing file fails here, loudly)."""
    return [st.Page(file, title=title, icon=icon, url_path=url if i else "", default=not i)
            for i, (file, title, icon, url) in enumerate(PAGES)]


def home_alias(home) -> "st.Page":
    """The default page's own path (/overview) as a hidden page that opens "/" with the link's settings: Streamlit
    serves the default page only at "/" and answers its path with "Page not found"."""
    def go_home() -> None:
        st.switch_page(home, query_params=st.query_params.to_dict())

    return st.Page(go_home, title=home.title, url_path=PAGES[0][3], visibility="hidden")


def say_if_unknown_path(home) -> None:
    """A link to a path that names no page runs the default page: say so above it (once)."""
    known = [url for *_, url in PAGES]
    path = common.unknown_path(st.context.url, known, st.get_option("server.baseUrlPath"))
    if path:
        common.notice(f"There is no page **/{path}**: this is the {home.title}. The pages are listed in the "
                      "sidebar.")


st.set_page_config(page_title="Spectrascope", page_icon=str(ICON), layout="wide")
st.set_option("client.toolbarMode", "minimal")      # a local workbench: no "Deploy" button
pages = build_pages()
page = st.navigation(pages + [home_alias(pages[0])])
common.set_page(page.url_path)
if page.url_path == PAGES[0][3]:       # /overview: to "/" (the hidden alias), settings kept
    page.run()
if page is pages[0]:
    say_if_unknown_path(page)
common.sidebar_model_picker()
common.sync_query_params()
notices = st.container()               # what a link asked for that cannot be shown, drawn once the page ran
page.run()
common.sync_query_params()
common.show_notices(notices)
