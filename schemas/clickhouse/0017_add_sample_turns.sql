-- Production conversations scored per assistant turn (pipeline/stream/batch.py). Each assistant
-- turn is scored in its context: the user turn before it, every user (and tool) turn up to it.
-- A sample keeps ONE row, carrying the conversation's verdict: it is flagged when any assistant
-- turn is; user_text, assistant_text, embedding and the detector columns are those of its first
-- flagged turn, else of its last assistant turn (a single exchange is stored as before). Every
-- rate, view and drift window therefore counts conversations.
--
-- n_assistant_turns: assistant turns scored (0: the sample has no answer).
-- first_flagged_turn: the first assistant turn the heads flagged (1-based; 0: none). Where a judge
--   decided the row (decided_by = 'judge'), flagged_categories is its verdict on that turn, while
--   first_flagged_turn and turn_attack_scores stay the heads'.
-- turn_attack_scores: each assistant turn's attack score, in order.
-- risk: the highest attack score over the turns.
-- Rows stored before this migration were scored on their last exchange only: they read 0 turns,
-- no flagged turn, no turn scores, and that exchange's attack score as their risk.
ALTER TABLE sample_scores
    ADD COLUMN IF NOT EXISTS n_assistant_turns UInt16 AFTER n_turns,
    ADD COLUMN IF NOT EXISTS first_flagged_turn UInt16 AFTER n_assistant_turns,
    ADD COLUMN IF NOT EXISTS turn_attack_scores Array(Float32) AFTER first_flagged_turn,
    ADD COLUMN IF NOT EXISTS risk Float32 DEFAULT attack_score AFTER turn_attack_scores;
