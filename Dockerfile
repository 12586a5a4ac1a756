# One image for every process: migrate, worker, ticker, archiver, serve.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY actors ./actors
COPY pipeline ./pipeline
COPY storage ./storage
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 worker

USER worker
ENTRYPOINT ["minalesh-workers"]
CMD ["--help"]
