-- 0009: who holds each lock, in words (a run and its attempt, or a host and a
-- process), shown where locks are listed and when a lock is refused, in place
-- of the owner's token, which stays a secret between the owner and the store.
-- Locks taken before this migration, or by a client that does not say, have none.
ALTER TABLE locks ADD COLUMN holder TEXT;
