// Healthcheck of the `mongo` service in docker-compose.yml, run by mongosh inside the container
// every few seconds: it initiates the single-node replica set `rs0` on the first run and reports
// healthy (exit 0) only once this member is the writable primary. Troupe needs a replica set,
// not a standalone server, for its multi-document transactions.
//
// The member is named `mongo:27017`, the service's name on the compose network, because the
// driver connects to the hosts the replica set names: Troupe's nodes reach it as
// mongodb://mongo:27017/troupe?replicaSet=rs0.
try {
  rs.status();
} catch (e) {
  // NotYetInitialized on a fresh volume; anything else (e.g. the server still starting) is
  // reported and retried by the next healthcheck.
  if (e.codeName !== 'NotYetInitialized') {
    print(`replica set status unavailable: ${e.message}`);
    quit(1);
  }
  rs.initiate({ _id: 'rs0', members: [{ _id: 0, host: 'mongo:27017' }] });
  print('initiated replica set rs0; waiting for this member to become primary');
  quit(1);
}
quit(db.hello().isWritablePrimary ? 0 : 1);
