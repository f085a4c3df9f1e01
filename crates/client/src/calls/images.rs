//! Images (pull, import, save) and the tasks that build them.

use super::*;

impl Client {
    /// `GET /images`.
    pub async fn list_images(&self) -> Result<Vec<api::Image>> {
        self.get("/images", "image list").await
    }

    /// `GET /images/:name`.
    pub async fn get_image(&self, name: &str) -> Result<api::Image> {
        self.get(&format!("/images/{}", encode_component(name)), "image")
            .await
    }

    /// `DELETE /images/:name`.
    pub async fn delete_image(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/images/{}", encode_component(name)))
            .await
    }

    /// `POST /images/pull`: `running` with a task to follow, or `exists`
    /// when the image is already at the reference's digest.
    pub async fn pull_image(&self, req: &api::PullImage) -> Result<api::PullStarted> {
        self.call(Method::POST, "/images/pull", Some(req), "pull")
            .await
    }

    /// `GET /tasks/:id`.
    pub async fn task(&self, id: &str) -> Result<api::Task> {
        self.get(&format!("/tasks/{}", encode_component(id)), "task")
            .await
    }

    /// `POST /images/import?name=`: the tarball at `path` (a `docker save`
    /// or an OCI layout), streamed from disk, never read whole.
    pub async fn import_image(&self, name: &str, path: &std::path::Path) -> Result<api::Imported> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Request(format!("open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| ClientError::Request(format!("stat {}: {e}", path.display())))?
            .len();
        let frames = futures_util::TryStreamExt::map_ok(
            tokio_util::io::ReaderStream::new(file),
            hyper::body::Frame::data,
        );
        let body = StreamBody::new(frames).boxed_unsync();
        let resp = self
            .send_body(
                Method::POST,
                &format!("/images/import?name={}", encode_component(name)),
                &[],
                body,
                Some(("application/x-tar", len)),
            )
            .await?;
        Self::decode(resp, "import result").await
    }

    /// `POST /sandboxes/:id/save-image`.
    pub async fn save_image(&self, sandbox: &str, name: &str) -> Result<api::Image> {
        self.call(
            Method::POST,
            &format!("{}/save-image", Self::sb(sandbox)),
            Some(&api::NameBody { name: name.into() }),
            "image",
        )
        .await
    }
}
