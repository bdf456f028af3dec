-- Auto-away and detached channels (issue 11, item 5).
-- `users.auto_away`: whether Ferry marks the user away upstream while no client is
-- attached; `users.away_message`: the user's own text for it (NULL: the operator's
-- `[upstream] away_message`).
-- `buffers.detached`: a channel the user stays in and logs, but whose lines are not
-- pushed to attached clients until it is attached again; `buffers.reattach_on`: what
-- attaches it by itself (`message`, `highlight` or `none`).
ALTER TABLE users ADD COLUMN auto_away BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE users ADD COLUMN away_message TEXT;
ALTER TABLE buffers ADD COLUMN detached BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE buffers ADD COLUMN reattach_on TEXT NOT NULL DEFAULT 'highlight';
