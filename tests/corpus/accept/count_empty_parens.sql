-- why: count() parses as count_star
SELECT count() FROM residents
