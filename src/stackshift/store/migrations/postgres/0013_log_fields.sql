-- 0013: a log record's fields (what it was logged with besides its message,
-- `extra=`), a JSON object as text; NULL for a record without any, as every
-- record written before this version is.
ALTER TABLE logs ADD COLUMN fields text;
