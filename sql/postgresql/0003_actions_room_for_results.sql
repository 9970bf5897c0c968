-- Every accepted action's row is updated once, just after its insert, when its acknowledged result is
-- recorded. With full pages that update moved the row to another page and added an entry to each of the
-- table's three indexes; with room left on the page it stays there (a HOT update) and touches no index.
-- Applies to pages written from now on.
ALTER TABLE actions SET (fillfactor = 50);
