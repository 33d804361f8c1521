FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY evaluator ./evaluator
COPY datasets ./datasets
RUN pip install --no-cache-dir .
# Any evalfleet subcommand; compose picks one per service.
ENTRYPOINT ["evalfleet"]
