//! Connecting to PostgreSQL, the same way for both services' databases.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// A pool of at most `max_connections` to `url`.
///
/// - JIT compilation is off: every statement either service runs is short, and the JIT that
///   PostgreSQL's cost estimates switch on over big tables costs more than it saves (15-20 ms a
///   listing call).
/// - A connection keeps its write and read buffers as large as the largest message it ever
///   sent or read (a statement that binds one digest per tag of a 10,000-tag repository is
///   megabytes), so each connection's buffers shrink back to their default size when it returns
///   to the pool; otherwise every idle connection holds its peak.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .after_release(|conn, _| {
            Box::pin(async move {
                sqlx::Connection::shrink_buffers(conn);
                Ok(true)
            })
        })
        .connect_with(options)
        .await
}
