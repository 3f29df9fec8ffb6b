"""Reports: leaderboard tables, the static HTML page and plots."""
