//! Files in a sandbox: read (streamed), write (streamed from disk or memory), stat and list.

use super::*;

impl Client {
    fn files_path(id: &str, path: &str) -> String {
        format!("{}/files?path={}", Self::sb(id), encode_query_path(path))
    }

    /// `GET …/files?path=`: the file's bytes, streamed.
    pub async fn read_file(&self, id: &str, path: &str, opts: ReadOptions) -> Result<FileDownload> {
        let mut p = Self::files_path(id, path);
        for (k, v) in [
            ("offset", opts.offset),
            ("limit", opts.limit),
            ("max_bytes", opts.max_bytes),
        ] {
            if v > 0 {
                p.push_str(&format!("&{k}={v}"));
            }
        }
        let resp = self.send(Method::GET, &p, &[], None).await?;
        let size = header_u64(resp.headers(), api::FILE_SIZE_HEADER);
        Ok(FileDownload {
            size,
            body: resp.into_body(),
        })
    }

    /// `GET …/files?path=&ls=true`: a directory listing.
    pub async fn list_files(&self, id: &str, path: &str) -> Result<Vec<api::FileInfo>> {
        self.get(
            &format!("{}&ls=true", Self::files_path(id, path)),
            "file list",
        )
        .await
    }

    /// `PUT …/files?path=[&mode=]`: writes `data` (sent with its
    /// `Content-Length`); `mode` is octal text such as `"0755"`.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Bytes,
        mode: Option<&str>,
    ) -> Result<api::StatusBody> {
        let mut p = Self::files_path(id, path);
        if let Some(m) = mode {
            p.push_str("&mode=");
            p.push_str(&encode_component(m));
        }
        let resp = self
            .send(
                Method::PUT,
                &p,
                &[],
                Some((data, "application/octet-stream")),
            )
            .await?;
        Self::decode(resp, "status").await
    }

    /// `HEAD …/files?path=`: size, mode and whether it is a directory.
    pub async fn stat_file(&self, id: &str, path: &str) -> Result<FileStat> {
        let resp = self
            .send(Method::HEAD, &Self::files_path(id, path), &[], None)
            .await?;
        let h = resp.headers();
        Ok(FileStat {
            size: header_u64(h, api::FILE_SIZE_HEADER).unwrap_or(0),
            mode: h
                .get(api::FILE_MODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            is_dir: h
                .get(api::FILE_ISDIR_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
        })
    }
}
