DROP TABLE event_transactions;
