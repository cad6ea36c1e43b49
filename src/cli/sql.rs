//! `lexview sql`: run SQL against the store and print a table.

use duckdb::types::ValueRef;

/// Runs `query` and renders the result as an aligned text table.
pub fn run_query(conn: &duckdb::Connection, query: &str) -> duckdb::Result<String> {
    let mut stmt = conn.prepare(query)?;
    let mut rows = stmt.query([])?;
    let columns: Vec<String> = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
    let mut table: Vec<Vec<String>> = Vec::new();
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            cells.push(render(row.get_ref(i)?));
        }
        table.push(cells);
    }
    Ok(format_table(&columns, &table))
}

fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => {
            let owned: duckdb::types::Value = other.to_owned();
            match owned {
                duckdb::types::Value::Boolean(b) => b.to_string(),
                duckdb::types::Value::TinyInt(n) => n.to_string(),
                duckdb::types::Value::SmallInt(n) => n.to_string(),
                duckdb::types::Value::Int(n) => n.to_string(),
                duckdb::types::Value::BigInt(n) => n.to_string(),
                duckdb::types::Value::HugeInt(n) => n.to_string(),
                duckdb::types::Value::UTinyInt(n) => n.to_string(),
                duckdb::types::Value::USmallInt(n) => n.to_string(),
                duckdb::types::Value::UInt(n) => n.to_string(),
                duckdb::types::Value::UBigInt(n) => n.to_string(),
                duckdb::types::Value::Float(n) => n.to_string(),
                duckdb::types::Value::Double(n) => n.to_string(),
                duckdb::types::Value::Text(t) => t,
                duckdb::types::Value::Timestamp(_, us) => {
                    chrono::DateTime::from_timestamp_micros(us)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                        .unwrap_or_else(|| us.to_string())
                }
                other => format!("{other:?}"),
            }
        }
    }
}

/// Aligned columns with a header rule and a row count.
pub fn format_table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count().min(80));
        }
    }
    let fmt_row = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = if c.chars().count() > 80 {
                    c.chars().take(79).chain(['…']).collect()
                } else {
                    c.clone()
                };
                format!("{c:<w$}", w = widths[i])
            })
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = fmt_row(columns);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&fmt_row(row));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// Runs `lexview sql`: `query` against the store in `data`, printed as a
/// table.
pub fn run(data: &std::path::Path, query: &str) -> anyhow::Result<()> {
    let conn = crate::index::store::open_for_query(data)?;
    let out = run_query(&conn, query).map_err(|e| anyhow::anyhow!("query failed: {e}"))?;
    print!("{out}");
    Ok(())
}
