-- why: tabs and newlines
SELECT
	sex ,
	COUNT ( * )
FROM
	residents
GROUP   BY
	sex
