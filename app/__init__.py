"""Spectrascope Streamlit app: pages and UI glue only (no math; see analysis/ and training/)."""
