# Stand-in for python:3.11-slim where the public registry is out of reach: Debian's Python 3.11 in a
# virtual environment first on PATH, pip reaching the package index as the host does.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH LANG=C.UTF-8
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
CMD ["python3"]
