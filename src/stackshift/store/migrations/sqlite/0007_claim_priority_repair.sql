-- 0007: data only.
-- Migration 0003 once set the claim priority of ready runs only (it has since
-- been fixed in place). On a database upgraded from schema 1 or 2 by that
-- version, the runs running or waiting at the time kept claim priority 0: once
-- ready again they went behind runs of lower priority until their next claim.
-- A run's own priority never changes, and otherwise its claim priority is
-- always either that priority (set at the start, at every claim and at a
-- manual retry) or above every priority (aged: 2^31). So an unfinished run
-- whose claim priority is neither was left so by that upgrade, and its own
-- priority is the right one. On any other database this changes nothing.
-- Operators: one pass over the runs table; no index is rebuilt.
UPDATE runs SET claim_priority = priority
WHERE status IN ('queued', 'scheduled', 'retrying', 'running', 'waiting')
  AND claim_priority <> priority AND claim_priority < 2147483648;
