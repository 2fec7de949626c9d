//! `auditlake query`: datafusion-cli's conventions over the archive. `-c SQL` and `-f FILE`
//! (both repeatable) run in order, every statement's result is printed as its rows stream
//! in, and with neither an interactive prompt reads statements (history, multi-line input
//! ended by `;`). SQL piped on standard input is run as a file.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use auditlake_queries::{ArchiveSession, MaxRows, OutputFormat, Printed};
use clap::Args;

/// Flags of `auditlake query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// SQL to run (`;` separates statements; every statement's result is printed). Same as
    /// one `-c`.
    pub sql: Option<String>,

    /// SQL to run; repeatable, run in order after the positional SQL.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub command: Vec<String>,

    /// File of SQL statements to run; repeatable, run in order after the `-c` commands.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Vec<PathBuf>,

    /// Output format: table, csv, json or ndjson.
    #[arg(long, env = "AUDITLAKE_FORMAT", default_value = "table")]
    pub format: OutputFormat,

    /// Rows printed per result at most: a number, or `inf` for all (the rest are counted and
    /// the count is shown on stderr) [default: 40 for table output, inf otherwise].
    #[arg(long, value_name = "N|inf")]
    pub maxrows: Option<MaxRows>,

    /// Allow `CREATE EXTERNAL TABLE` and `CREATE VIEW` (to join the archive with a file of
    /// your own). They can read any file this process can; without this flag only queries
    /// run (no DDL, no INSERT or COPY, no SET).
    #[arg(long)]
    pub allow_external_tables: bool,
}

/// Runs `auditlake query`.
pub async fn run(archive_location: &str, args: QueryArgs) -> Result<()> {
    let mut scripts: Vec<(String, String)> = Vec::new();
    if let Some(sql) = &args.sql {
        scripts.push(("the SQL argument".into(), sql.clone()));
    }
    for (i, c) in args.command.iter().enumerate() {
        scripts.push((format!("-c #{}", i + 1), c.clone()));
    }
    for f in &args.file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading SQL file {}", f.display()))?;
        scripts.push((f.display().to_string(), text));
    }
    let interactive = scripts.is_empty() && std::io::stdin().is_terminal();
    if scripts.is_empty() && !interactive {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading SQL from standard input")?;
        scripts.push(("standard input".into(), text));
    }
    let archive = crate::open_existing_archive(archive_location).await?;
    let mut session = crate::open_session(&archive).await?;
    if args.allow_external_tables {
        session.allow_external_tables();
    }
    let maxrows = args
        .maxrows
        .unwrap_or_else(|| MaxRows::default_for(args.format));
    if interactive {
        return repl(&session, args.format, maxrows).await;
    }
    for (name, sql) in &scripts {
        if sql.trim().is_empty() {
            bail!("{name}: no SQL statement");
        }
        run_script(&session, sql, args.format, maxrows)
            .await
            .with_context(|| format!("query failed ({name})"))?;
    }
    Ok(())
}

async fn run_script(
    session: &ArchiveSession,
    sql: &str,
    format: OutputFormat,
    maxrows: MaxRows,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    session
        .run_printing(sql, format, maxrows, &mut out, report)
        .await?;
    out.flush().context("writing results")?;
    Ok(())
}

/// Says on stderr how many rows a statement returned when not all were printed (stdout
/// keeps only the results, for scripts).
fn report(_statement: &str, p: Printed) {
    if p.shown < p.rows {
        eprintln!(
            "({} rows; the first {} shown: --maxrows inf shows all)",
            p.rows, p.shown
        );
    }
}

/// The interactive prompt: statements end with `;` and may span lines; history is kept in
/// `~/.auditlake_history`; `\q`, `quit`, `exit` or Ctrl-D leave.
async fn repl(session: &ArchiveSession, format: OutputFormat, maxrows: MaxRows) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().context("starting the prompt")?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".auditlake_history"));
    if let Some(h) = &history {
        // A first run has no history yet.
        let _ = editor.load_history(h);
    }
    eprintln!(
        "auditlake SQL: tables events, findings, rbac_history and the view rbac_state. End a \
         statement with ';'; \\q quits."
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "auditlake> "
        } else {
            "        -> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
                    break;
                }
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if trimmed.ends_with(';') {
                    let statement = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(statement.as_str());
                    if let Err(e) = run_script(session, &statement, format, maxrows).await {
                        eprintln!("error: {}", crate::error_chain(&e));
                    }
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the prompt"),
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!(
            "warning: could not save the history to {}: {e}",
            h.display()
        );
    }
    Ok(())
}
