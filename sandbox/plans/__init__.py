"""Plans, pure: what a plan reads (relation), its bounds, grades and functions, and the SQL it compiles to."""
