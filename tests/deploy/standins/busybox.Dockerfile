# Stand-in for busybox in the README's backup command (`tar czf`): Debian's base has tar and gzip.
ARG BASE
FROM ${BASE}
CMD ["sh"]
