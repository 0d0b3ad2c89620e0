# One image for every parley process; compose.yaml picks the part with the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PARLEY_HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY application ./application
COPY schema ./schema
COPY projections ./projections
COPY adapters ./adapters
COPY api ./api
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --system parley
USER parley
ENTRYPOINT ["parley"]
