"""Spectrascope analysis: model sources, spectra, heavy-tail estimators, allocation, intruders."""
