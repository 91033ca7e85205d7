//! CSI ephemeral inline volumes: off unless the admin enables them; only
//! allowed NFS servers and allowed mount options, never `mountedShare`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::grpc::csi::v1::{self as csi};
use crate::storage::export::ExportSpec;
use crate::storage::ids::RelPath;
use crate::sys::hostpath::HostPath;
use crate::sys::mountopts;
use crate::sys::offload::{self};

use super::*;

impl NodeService {
    pub(super) async fn publish_inline(
        &self,
        req: &csi::NodePublishVolumeRequest,
        target: PathBuf,
        flags: &[String],
    ) -> Result<csi::NodePublishVolumeResponse> {
        if !self.config.allow_inline {
            return Err(Error::InlineDisabled);
        }
        let (source, options) = self.inline_source(&req.volume_context, flags, req.readonly)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", target.display())])?;
        let (m, base, ro, tgt) = (
            self.mounter.clone(),
            self.base(),
            req.readonly,
            target.clone(),
        );
        let outcome = offload::run(
            "inline mount",
            self.op_timeout(),
            move || -> Result<Outcome> {
                let hp = HostPath::create(&base, &tgt)?;
                with_dir(&hp, |dir| {
                    let table = m.mounts()?;
                    if let Some(existing) = mounted_at(m.as_ref(), &table, &hp, dir)? {
                        return Ok(
                            if existing.is_nfs()
                                && existing.source == source
                                && existing.read_only() == ro
                            {
                                Outcome::Already
                            } else {
                                Outcome::Conflict(format!("{} is mounted there", existing.source))
                            },
                        );
                    }
                    m.attach_nfs(&source, &options, dir.into())?;
                    Ok(Outcome::Done)
                })
            },
        )
        .await??;
        if outcome.finish(&target, "inline volume published")? {
            self.check_read_only(&target, req.readonly).await?;
        }
        Ok(csi::NodePublishVolumeResponse {})
    }

    /// The NFS source and options of an inline volume, checked against
    /// what the admin allows: an allowed server, and only the NFS client
    /// options of the inline allow-list from the pod's mount flags.
    pub(super) fn inline_source(
        &self,
        ctx: &HashMap<String, String>,
        flags: &[String],
        readonly: bool,
    ) -> Result<(String, Vec<String>)> {
        let mut keys: Vec<&String> = ctx.keys().collect();
        keys.sort();
        for key in keys {
            let ok = matches!(key.as_str(), "server" | "share" | "subDir")
                || key.starts_with("csi.storage.k8s.io/");
            if !ok {
                let reason = if key == "mountedShare" {
                    "inline volumes cannot use a host path; only server, share and subDir".into()
                } else {
                    "unknown; inline volumes take server, share and subDir".into()
                };
                return Err(Error::InlineParameter {
                    key: key.clone(),
                    reason,
                });
            }
        }
        let get = |k: &'static str| {
            ctx.get(k).ok_or(Error::InlineParameter {
                key: k.into(),
                reason: "missing".into(),
            })
        };
        let server = get("server")?;
        if !self.config.inline_servers.iter().any(|s| s == server) {
            return Err(Error::InlineServer(server.clone()));
        }
        for o in mountopts::split(flags) {
            mountopts::check_inline(&o)?;
        }
        let export = ExportSpec::nfs(server, get("share")?, &[])?;
        let subdir = ctx.get("subDir").map(|s| RelPath::parse(s)).transpose()?;
        let source = export.nfs_source(subdir.as_ref()).unwrap_or_default();
        let mut options = self.nfs_options(&[flags])?;
        if readonly && !options.iter().any(|o| o == "ro") {
            options.retain(|o| o != "rw");
            options.push("ro".into());
        }
        // A pod's own NFS mount never carries setuid binaries or device
        // nodes onto the host's mount table.
        for o in ["nosuid", "nodev"] {
            if !options.iter().any(|x| x == o) {
                options.push(o.into());
            }
        }
        Ok((source, options))
    }
}
