//! Persistent volumes.

use super::*;

impl Client {
    /// `GET /volumes`.
    pub async fn list_volumes(&self) -> Result<Vec<api::Volume>> {
        self.get("/volumes", "volume list").await
    }

    /// `POST /volumes`: a new volume of `size_mb` MiB.
    pub async fn create_volume(&self, name: &str, size_mb: u64) -> Result<api::Volume> {
        let body = api::CreateVolume {
            name: name.into(),
            size_mb,
        };
        self.call(Method::POST, "/volumes", Some(&body), "volume")
            .await
    }

    /// `GET /volumes/:name`, with attachments.
    pub async fn get_volume(&self, name: &str) -> Result<api::Volume> {
        self.get(&format!("/volumes/{}", encode_component(name)), "volume")
            .await
    }

    /// `DELETE /volumes/:name`.
    pub async fn delete_volume(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/volumes/{}", encode_component(name)))
            .await
    }

    /// `POST /volumes/:name/resize` (grow only).
    pub async fn resize_volume(&self, name: &str, size_mb: u64) -> Result<api::Resized> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/resize", encode_component(name)),
            Some(&api::ResizeVolume { size_mb }),
            "resize result",
        )
        .await
    }

    /// `POST /volumes/:name/snapshot`: a copy of a detached volume.
    pub async fn clone_volume(&self, source: &str, new_name: &str) -> Result<api::Volume> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/snapshot", encode_component(source)),
            Some(&api::NameBody {
                name: new_name.into(),
            }),
            "volume",
        )
        .await
    }

    /// `GET /volumes/:name/backups`, newest first.
    pub async fn list_backups(&self, name: &str) -> Result<Vec<api::VolumeBackup>> {
        self.get(
            &format!("/volumes/{}/backups", encode_component(name)),
            "backup list",
        )
        .await
    }

    /// `POST /volumes/:name/backups`: a backup now (answers when uploaded).
    pub async fn backup_volume(&self, name: &str) -> Result<api::VolumeBackup> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/backups", encode_component(name)),
            None::<&()>,
            "backup",
        )
        .await
    }

    /// `POST /volumes/:name/backups/restore`.
    pub async fn restore_volume(&self, name: &str, backup_id: &str) -> Result<api::Restored> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/backups/restore", encode_component(name)),
            Some(&api::RestoreBackup {
                backup_id: backup_id.into(),
            }),
            "restore result",
        )
        .await
    }

    /// `DELETE /volumes/:name/backups/:id`.
    pub async fn delete_backup(&self, name: &str, backup_id: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!(
            "/volumes/{}/backups/{}",
            encode_component(name),
            encode_component(backup_id)
        ))
        .await
    }
}
