DROP TABLE reorged_events, reorgs;
