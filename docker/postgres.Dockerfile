# PostgreSQL 15 from Debian's package, on the shared E2E base image.
# Build context: docker/postgres/ (the entrypoint script).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
# In the same step, drop what a test database never uses, so the layer stays small (it is
# what `e2e --images` loads first, so its size is time to the first test): apt's caches, the
# cluster Debian creates on install, translations, the LLVM JIT (off below) and z3 (only
# LLVM uses it), Perl (only postgresql-common's wrappers use it; the entrypoint runs initdb
# and postgres directly) and the locale sources (initdb uses the C locale). 164 MB -> 77 MB.
# `ldd` of every binary and library under /usr/lib/postgresql/15 finds nothing missing.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/lib/postgresql/15 /etc/postgresql/15/main \
    /usr/share/locale/* /usr/share/doc/* /usr/share/man/* \
    /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode /usr/lib/x86_64-linux-gnu/libLLVM-*.so* \
    /usr/lib/x86_64-linux-gnu/libz3.so* /usr/share/perl /usr/lib/x86_64-linux-gnu/perl \
    /usr/lib/x86_64-linux-gnu/libperl.so* /usr/share/i18n \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY --chmod=0755 entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
# The cluster, initialised now: a container then only sets its credentials, and is ready in a
# fraction of a second instead of after initdb. WAL segments of 1 MB keep it small.
RUN postgres-entrypoint init
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
