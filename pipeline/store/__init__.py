"""ClickHouse: the client factory, migrations and the queries safemon runs."""
