-- lexview store, migration 5: bidirectional handle verification. `handle`
-- is what answers show: the claimed handle until it is checked, then the
-- claimed handle if the DID document and the handle's DNS TXT record or
-- /.well-known/atproto-did agree, else 'handle.invalid'. `claimed_handle` is
-- the handle of the last #identity event.
ALTER TABLE actors ADD COLUMN claimed_handle VARCHAR;
ALTER TABLE actors ADD COLUMN handle_checked_at TIMESTAMP;
UPDATE actors SET claimed_handle = handle;
