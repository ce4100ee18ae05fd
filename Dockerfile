# Spectrascope: CPU image. Build: docker build -t spectrascope .  Run: docker run --init -p 8501:8501 -v spectrascope-data:/data spectrascope
FROM python:3.11-slim

# tini reaps the background training processes the app starts (also pass --init if you prefer Docker's)
RUN apt-get update && apt-get install -y --no-install-recommends tini curl && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 spectrascope
WORKDIR /app

# CPU-only torch from PyTorch's CPU wheel index (PyPI's default Linux wheel is a multi-GB CUDA build)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY --chown=spectrascope:spectrascope . .

ENV SPECTRASCOPE_DATA=/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown spectrascope:spectrascope /data
VOLUME ["/data"]
USER spectrascope
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1

ENTRYPOINT ["/usr/bin/tini", "--"]
# Inside the container the app must listen on all interfaces for -p to reach it; outside Docker it binds 127.0.0.1.
CMD ["python", "-m", "streamlit", "run", "app/main.py", "--server.address=0.0.0.0", "--server.port=8501", \
     "--server.headless=true", "--browser.gatherUsageStats=false"]
