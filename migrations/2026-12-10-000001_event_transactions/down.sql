DROP TABLE event_transactions_backfill;
DROP TABLE event_transactions;
