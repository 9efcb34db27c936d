# A Troupe node. Used by docker-compose.yml (three nodes behind a load balancer); on its own:
#   docker build -t troupe . && docker run -p 7420:7420 -v troupe-data:/data troupe
#
# node:20-bookworm (not -slim): better-sqlite3 and cbor-extract may build from source on
# install, which needs the python3, make and g++ this image has.
FROM node:20-bookworm

WORKDIR /app

# Dependencies first, so code changes rebuild only the layers below.
COPY package.json package-lock.json ./
RUN npm install --omit=dev --no-audit --no-fund

COPY tsconfig.json ./
COPY bin ./bin
COPY protocol ./protocol
COPY machines ./machines
COPY actors ./actors
COPY src ./src
COPY examples ./examples

ENV NODE_ENV=production \
    TROUPE_HOST=0.0.0.0 \
    TROUPE_PORT=7420 \
    TROUPE_DATA_DIR=/data

RUN mkdir -p /data && chown node:node /data
VOLUME /data
USER node
EXPOSE 7420

HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:7420/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"

# What `npm start` runs, without npm in between: SIGTERM from `docker stop` reaches Troupe
# itself, which then closes connections, finishes running turns and releases its actor leases
# (so other nodes take its actors at once instead of after the lease time).
CMD ["node", "--import", "tsx", "src/main.ts"]
