-- No statement of the service reads positions by vault: a batch and a reorg read and write
-- positions by their primary key. The index cost a descent on every new position, and the
-- planner, with the account as its last column, picked it over the primary key for a third of
-- the batch lookups (idx_scan 101,643 of 496,705 in a 2 M-event sync), reading a second large
-- random-key index. Readers that list a vault's positions can add one of their own.
DROP INDEX position_vault;
