-- Where an alert's finding came from: probe | stream | drift. Stream and drift alerts used to
-- say so in `suite` ('stream', 'drift'); they now leave `suite` empty, and rows stored before
-- this migration get their source from it.
ALTER TABLE alerts
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT multiIf(suite = 'stream', 'stream', suite = 'drift', 'drift', 'probe') AFTER severity;
