-- why: keywords and names are case-insensitive
select count(*) from residents
