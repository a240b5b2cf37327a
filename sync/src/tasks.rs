//! A client of the hub's task calls (`ds.runner.v1.Tasks`): what `ds run`,
//! `ds tasks` and `ds runner` speak, on the same channel and token
//! handling as sync ([`crate::channel`], [`Bearer`]).

use std::path::Path;

use ds_proto::MAX_TASK_MESSAGE;
use ds_proto::runner::tasks_client::TasksClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Result;
use crate::remote::{Bearer, channel};

/// The generated client with the bearer token on every call.
pub type Tasks = TasksClient<InterceptedService<Channel, Bearer>>;

/// Connects to the task calls of the hub at `url` with `token`.
pub async fn connect(url: &str, token: &str, ca: Option<&Path>) -> Result<Tasks> {
    let bearer = Bearer::new(token)?;
    let ch = channel(url, ca).await?;
    Ok(TasksClient::with_interceptor(ch, bearer)
        .max_decoding_message_size(MAX_TASK_MESSAGE)
        .max_encoding_message_size(MAX_TASK_MESSAGE))
}
