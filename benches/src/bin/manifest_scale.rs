//! Manifest scale: commit latency and query start-up as the manifest grows.
//!
//! Commits `--records` manifest records (one small events file each, spread over hours) to
//! a fresh local archive, and prints, measured in this one run:
//! - commit latency of the first and of the last `--window` commits (median, p90): flat
//!   when finding the head does not depend on the number of records;
//! - finding the head the v2 way (head pointer) and the v1 way (LIST `_manifest/` and read
//!   the last), alternated, at the final size;
//! - reading the live files from the manifest, opening a SQL session over them (query
//!   start-up), and a first `count(*)` over every file.
#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is the failure report

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use auditlake_archive::{
    Archive, ArchiveLocation, CommitContents, FinishedFile, ParquetSettings, Table,
    TableFileEncoder, data_file_path, events_partition_dir,
};
use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos, events_file_schema};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Manifest records to commit.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Commits measured at the start and at the end.
    #[arg(long, default_value_t = 200)]
    window: usize,
    /// Where the archive is made (a fresh directory inside it); default: a temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn small_events_file() -> Result<(bytes::Bytes, [u8; 32], u64)> {
    let text = std::fs::read(auditlake_fixtures::data_dir().join("samples/handwritten.ndjson"))?;
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    for (n, off, line) in auditlake_schema::lines(&text) {
        let pos = SourcePos {
            cluster: "bench",
            source: "sample",
            line: Some(n),
            byte_offset: off as u64,
        };
        d.decode_line(line, pos, &mut q);
    }
    let batch = d.finish_batch().context("no events")?;
    let rows = batch.num_rows() as u64;
    let file_batch =
        arrow::array::RecordBatch::try_new(events_file_schema(), batch.columns()[1..].to_vec())?;
    let mut file = TableFileEncoder::new(
        Table::Events,
        &events_file_schema(),
        ParquetSettings::default(),
    )?;
    file.write(&file_batch)?;
    let (bytes, sha256) = file.finish()?;
    Ok((bytes.into(), sha256, rows))
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.2} ms, p90 {:.2} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10])
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let archive = Archive::open(ArchiveLocation::parse(base.path().to_str().unwrap())?)?;
    let (file, sha256, rows) = small_events_file()?;
    let mut latencies = Vec::with_capacity(args.records as usize);
    let started = Instant::now();
    for i in 0..args.records {
        let hour = 490_000 + i as i64; // 2025-11-24 onwards, one hour per file
        let contents = CommitContents {
            files: vec![FinishedFile {
                table: Table::Events,
                relative_path: data_file_path(
                    Table::Events,
                    &events_partition_dir("bench", hour),
                    "bench",
                    i + 1,
                ),
                cluster: "bench".into(),
                bytes: file.clone(),
                sha256,
                rows,
                min_micros: hour * 3_600_000_000,
                max_micros: hour * 3_600_000_000,
                rows_root: None,
            }],
            ..Default::default()
        };
        let t = Instant::now();
        archive.commit("bench", &contents, None, false).await?;
        latencies.push(t.elapsed());
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "{} records committed ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let w = args.window.min(latencies.len() / 2);
    println!("records: {}", args.records);
    println!(
        "commit latency, commits 1..{w}: {}",
        stats(latencies[..w].to_vec())
    );
    println!(
        "commit latency, last {w} commits: {}",
        stats(latencies[latencies.len() - w..].to_vec())
    );
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        archive.manifest_head().await?;
        v2.push(t.elapsed());
        let t = Instant::now();
        let paths = archive.manifest_paths().await?;
        archive.read_manifest(paths.last().unwrap()).await?;
        v1.push(t.elapsed());
    }
    println!("finding the head, head pointer (v2): {}", stats(v2));
    println!("finding the head, LIST + read last (v1): {}", stats(v1));
    let (mut manifest, mut open, mut first_query) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let attested = auditlake_archive::AttestedFiles::load(&archive).await?;
        manifest.push(t.elapsed());
        assert_eq!(attested.files(Table::Events).count() as u64, args.records);
        let t = Instant::now();
        let session = auditlake_queries::ArchiveSession::open(&archive).await?;
        open.push(t.elapsed());
        let t = Instant::now();
        let (_, batches) = session.sql("SELECT count(*) FROM events").await?;
        first_query.push(t.elapsed());
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n as u64, rows * args.records);
    }
    println!(
        "live files from the manifest (checkpoint + records after it): {}",
        stats(manifest)
    );
    println!(
        "query start-up over {} files (session open: manifest, stray-file LIST, tables): {}",
        args.records,
        stats(open)
    );
    println!(
        "first query, SELECT count(*) FROM events over {} files: {}",
        args.records,
        stats(first_query)
    );
    Ok(())
}
