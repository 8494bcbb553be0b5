# The workers on Nomad (docker driver): one group per kind, each on one GPU (Nomad's nvidia device plugin),
# registered in Consul as `ainern2d-worker-<kind>` with checks on /health and /ready.
#
# Before the first run:
#   nomad var put nomad/jobs/ainern2d-worker broker_url=amqp://... s3_access_key_id=... s3_secret_access_key=...
#   (optional Consul KV, defaults below: ainern2d/broker/prefix, ainern2d/store/endpoint,
#   ainern2d/store/bucket, ainern2d/worker/<kind>/slots)
# Each client needs, in its agent config:
#   client { max_kill_timeout = "3700s" }   (the default, 30s, caps every kill_timeout below: the drain would
#                                            be cut after 30 s)
#   client { host_volume "ainern2d-model-cache" { path = "/var/cache/ainern2d/models" } }   (owned by uid 1000)
#   the nvidia device plugin, and Docker with the "nvidia" runtime (nvidia-container-toolkit).
# A node drain's deadline (`nomad node drain -deadline`, 1h by default) must exceed the longest kill_timeout.
#   nomad job run deploy/nomad/ainern2d-worker.nomad.hcl
#
# Drain: Nomad sends SIGTERM (kill_signal); the worker stops taking deliveries at once, lets in-flight jobs
# run for shutdown.grace_s, returns the rest to their queues and exits 0. kill_timeout is shutdown.grace_s +
# 60 s for what the worker does after the grace (cancelled jobs stopping, the drained heartbeat, the broker's
# close, a supervised ComfyUI, the last multipart-upload cleanup, the probes).
job "ainern2d-worker" {
  datacenters = ["dc1"]
  type        = "service"

  # Placement needs no constraint of its own: each task asks for an nvidia/gpu device.

  group "llm" {
    count = 1

    network {
      port "http" {
        to = 9100
      }
    }

    # One worker at a time; the next one starts after the previous drained and the new one is ready (models
    # warm: healthy_deadline leaves time for a cold download).
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "30s"
      healthy_deadline  = "30m"
      progress_deadline = "2h"
      auto_revert       = true
    }

    # A worker that recycles itself (liveness.recycle_after_jobs, recycle_above_*_mb) drains and exits 0
    # to be started afresh, and one whose /health reports a stalled job is restarted (check_restart; that
    # restart still waits for kill_timeout): restarts are routine, so they never fail the allocation.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "5s"
      mode     = "delay"
    }

    # scratch_dir lives in the allocation's data directory: a restarted task (same allocation) sweeps what
    # a crashed one left and aborts its open multipart uploads; sticky keeps it for a replacement
    # allocation on the same client.
    ephemeral_disk {
      size   = 51200
      sticky = true
    }

    # The manifest's cache_dir, shared by the workers of a client: s3:// model files are downloaded once
    # (locked) and verified.
    volume "model-cache" {
      type   = "host"
      source = "ainern2d-model-cache"
    }

    service {
      name = "ainern2d-worker-llm"
      port = "http"
      tags = ["llm", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"

        # /health answers from the start (before warm-up); a worker that stops answering is restarted.
        check_restart {
          limit = 6
          grace = "60s"
        }
      }

      # 200 while the broker is connected, the store reachable, the worker accepting work and its outcomes
      # going through; 503 while it warms up or drains.
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "worker" {
      driver = "docker"
      user   = "1000"

      config {
        image           = "registry.example.com/ainern2d/worker:0.1.0"
        args            = ["run"]
        ports           = ["http"]
        runtime         = "nvidia"
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
          tmpfs_options {
            size = 2147483648
          }
        }
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "660s"

      volume_mount {
        volume      = "model-cache"
        destination = "/var/cache/ainern2d/models"
      }

      env {
        AINERN2D_WORKER_CONFIG    = "/local/worker.toml"
        AINERN2D_WORKER_WORKER_ID = "${node.unique.name}-llm-${NOMAD_ALLOC_INDEX}"
        HOME                      = "/tmp"
      }

      template {
        destination = "local/worker.toml"
        change_mode = "restart"
        data        = <<-EOT
          scratch_dir = "/alloc/data/scratch"

          [broker]
          prefix = "{{ keyOrDefault "ainern2d/broker/prefix" "ainern2d" }}"

          [jobs]
          kinds = ["llm"]
          backend = "inference"
          max_runtime_s = { llm = 600 }

          [jobs.slots]
          llm = {{ keyOrDefault "ainern2d/worker/llm/slots" "4" }}

          [models]
          manifest = "/local/models.toml"

          [store]
          endpoint = "{{ keyOrDefault "ainern2d/store/endpoint" "http://minio.service.consul:9000" }}"
          bucket = "{{ keyOrDefault "ainern2d/store/bucket" "ainern2d-outputs" }}"

          [http]
          listen = "0.0.0.0:9100"

          [shutdown]
          # The longest job (jobs.max_runtime_s) may finish; kill_timeout is this + 60 s.
          grace_s = 600

          [log]
          format = "json"
        EOT
      }

      # The model manifest from Consul KV (its cache_dir: /var/cache/ainern2d/models); the task waits for
      # the key.
      template {
        destination = "local/models.toml"
        change_mode = "restart"
        data        = "{{ key \"ainern2d/worker/models.toml\" }}"
      }

      # Secrets from Nomad Variables. With Vault instead:
      #   {{ with secret "kv/data/ainern2d/worker" }}AINERN2D_WORKER_BROKER__URL={{ .Data.data.broker_url }}...{{ end }}
      template {
        destination = "secrets/worker.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/ainern2d-worker" -}}
          AINERN2D_WORKER_BROKER__URL={{ .broker_url }}
          AINERN2D_WORKER_STORE__ACCESS_KEY_ID={{ .s3_access_key_id }}
          AINERN2D_WORKER_STORE__SECRET_ACCESS_KEY={{ .s3_secret_access_key }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 4000
        memory = 24576

        device "nvidia/gpu" {
          count = 1
        }
      }
    }
  }

  group "audio" {
    count = 1

    network {
      port "http" {
        to = 9100
      }
    }

    # One worker at a time; the next one starts after the previous drained and the new one is ready (models
    # warm: healthy_deadline leaves time for a cold download).
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "30s"
      healthy_deadline  = "30m"
      progress_deadline = "2h"
      auto_revert       = true
    }

    # A worker that recycles itself (liveness.recycle_after_jobs, recycle_above_*_mb) drains and exits 0
    # to be started afresh, and one whose /health reports a stalled job is restarted (check_restart; that
    # restart still waits for kill_timeout): restarts are routine, so they never fail the allocation.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "5s"
      mode     = "delay"
    }

    # scratch_dir lives in the allocation's data directory: a restarted task (same allocation) sweeps what
    # a crashed one left and aborts its open multipart uploads; sticky keeps it for a replacement
    # allocation on the same client.
    ephemeral_disk {
      size   = 51200
      sticky = true
    }

    # The manifest's cache_dir, shared by the workers of a client: s3:// model files are downloaded once
    # (locked) and verified.
    volume "model-cache" {
      type   = "host"
      source = "ainern2d-model-cache"
    }

    service {
      name = "ainern2d-worker-audio"
      port = "http"
      tags = ["audio", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"

        # /health answers from the start (before warm-up); a worker that stops answering is restarted.
        check_restart {
          limit = 6
          grace = "60s"
        }
      }

      # 200 while the broker is connected, the store reachable, the worker accepting work and its outcomes
      # going through; 503 while it warms up or drains.
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "worker" {
      driver = "docker"
      user   = "1000"

      config {
        image           = "registry.example.com/ainern2d/worker:0.1.0"
        args            = ["run"]
        ports           = ["http"]
        runtime         = "nvidia"
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
          tmpfs_options {
            size = 2147483648
          }
        }
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "660s"

      volume_mount {
        volume      = "model-cache"
        destination = "/var/cache/ainern2d/models"
      }

      env {
        AINERN2D_WORKER_CONFIG    = "/local/worker.toml"
        AINERN2D_WORKER_WORKER_ID = "${node.unique.name}-audio-${NOMAD_ALLOC_INDEX}"
        HOME                      = "/tmp"
      }

      template {
        destination = "local/worker.toml"
        change_mode = "restart"
        data        = <<-EOT
          scratch_dir = "/alloc/data/scratch"

          [broker]
          prefix = "{{ keyOrDefault "ainern2d/broker/prefix" "ainern2d" }}"

          [jobs]
          kinds = ["audio"]
          backend = "inference"
          max_runtime_s = { audio = 600 }

          [jobs.slots]
          audio = {{ keyOrDefault "ainern2d/worker/audio/slots" "2" }}

          [models]
          manifest = "/local/models.toml"

          [store]
          endpoint = "{{ keyOrDefault "ainern2d/store/endpoint" "http://minio.service.consul:9000" }}"
          bucket = "{{ keyOrDefault "ainern2d/store/bucket" "ainern2d-outputs" }}"

          [http]
          listen = "0.0.0.0:9100"

          [shutdown]
          # The longest job (jobs.max_runtime_s) may finish; kill_timeout is this + 60 s.
          grace_s = 600

          [log]
          format = "json"
        EOT
      }

      # The model manifest from Consul KV (its cache_dir: /var/cache/ainern2d/models); the task waits for
      # the key.
      template {
        destination = "local/models.toml"
        change_mode = "restart"
        data        = "{{ key \"ainern2d/worker/models.toml\" }}"
      }

      # Secrets from Nomad Variables. With Vault instead:
      #   {{ with secret "kv/data/ainern2d/worker" }}AINERN2D_WORKER_BROKER__URL={{ .Data.data.broker_url }}...{{ end }}
      template {
        destination = "secrets/worker.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/ainern2d-worker" -}}
          AINERN2D_WORKER_BROKER__URL={{ .broker_url }}
          AINERN2D_WORKER_STORE__ACCESS_KEY_ID={{ .s3_access_key_id }}
          AINERN2D_WORKER_STORE__SECRET_ACCESS_KEY={{ .s3_secret_access_key }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 4000
        memory = 8192

        device "nvidia/gpu" {
          count = 1
        }
      }
    }
  }

  group "lipsync" {
    count = 1

    network {
      port "http" {
        to = 9100
      }
    }

    # One worker at a time; the next one starts after the previous drained and the new one is ready (models
    # warm: healthy_deadline leaves time for a cold download).
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "30s"
      healthy_deadline  = "30m"
      progress_deadline = "2h"
      auto_revert       = true
    }

    # A worker that recycles itself (liveness.recycle_after_jobs, recycle_above_*_mb) drains and exits 0
    # to be started afresh, and one whose /health reports a stalled job is restarted (check_restart; that
    # restart still waits for kill_timeout): restarts are routine, so they never fail the allocation.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "5s"
      mode     = "delay"
    }

    # scratch_dir lives in the allocation's data directory: a restarted task (same allocation) sweeps what
    # a crashed one left and aborts its open multipart uploads; sticky keeps it for a replacement
    # allocation on the same client.
    ephemeral_disk {
      size   = 51200
      sticky = true
    }

    # The manifest's cache_dir, shared by the workers of a client: s3:// model files are downloaded once
    # (locked) and verified.
    volume "model-cache" {
      type   = "host"
      source = "ainern2d-model-cache"
    }

    service {
      name = "ainern2d-worker-lipsync"
      port = "http"
      tags = ["lipsync", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"

        # /health answers from the start (before warm-up); a worker that stops answering is restarted.
        check_restart {
          limit = 6
          grace = "60s"
        }
      }

      # 200 while the broker is connected, the store reachable, the worker accepting work and its outcomes
      # going through; 503 while it warms up or drains.
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "worker" {
      driver = "docker"
      user   = "1000"

      config {
        image           = "registry.example.com/ainern2d/worker:0.1.0"
        args            = ["run"]
        ports           = ["http"]
        runtime         = "nvidia"
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
          tmpfs_options {
            size = 2147483648
          }
        }
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "1860s"

      volume_mount {
        volume      = "model-cache"
        destination = "/var/cache/ainern2d/models"
      }

      env {
        AINERN2D_WORKER_CONFIG    = "/local/worker.toml"
        AINERN2D_WORKER_WORKER_ID = "${node.unique.name}-lipsync-${NOMAD_ALLOC_INDEX}"
        HOME                      = "/tmp"
      }

      template {
        destination = "local/worker.toml"
        change_mode = "restart"
        data        = <<-EOT
          scratch_dir = "/alloc/data/scratch"

          [broker]
          prefix = "{{ keyOrDefault "ainern2d/broker/prefix" "ainern2d" }}"

          [jobs]
          kinds = ["lipsync"]
          backend = "inference"
          max_runtime_s = { lipsync = 1800 }

          [jobs.slots]
          lipsync = {{ keyOrDefault "ainern2d/worker/lipsync/slots" "1" }}

          [models]
          manifest = "/local/models.toml"

          [store]
          endpoint = "{{ keyOrDefault "ainern2d/store/endpoint" "http://minio.service.consul:9000" }}"
          bucket = "{{ keyOrDefault "ainern2d/store/bucket" "ainern2d-outputs" }}"

          [http]
          listen = "0.0.0.0:9100"

          [shutdown]
          # The longest job (jobs.max_runtime_s) may finish; kill_timeout is this + 60 s.
          grace_s = 1800

          [log]
          format = "json"
        EOT
      }

      # The model manifest from Consul KV (its cache_dir: /var/cache/ainern2d/models); the task waits for
      # the key.
      template {
        destination = "local/models.toml"
        change_mode = "restart"
        data        = "{{ key \"ainern2d/worker/models.toml\" }}"
      }

      # Secrets from Nomad Variables. With Vault instead:
      #   {{ with secret "kv/data/ainern2d/worker" }}AINERN2D_WORKER_BROKER__URL={{ .Data.data.broker_url }}...{{ end }}
      template {
        destination = "secrets/worker.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/ainern2d-worker" -}}
          AINERN2D_WORKER_BROKER__URL={{ .broker_url }}
          AINERN2D_WORKER_STORE__ACCESS_KEY_ID={{ .s3_access_key_id }}
          AINERN2D_WORKER_STORE__SECRET_ACCESS_KEY={{ .s3_secret_access_key }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 8000
        memory = 16384

        device "nvidia/gpu" {
          count = 1
        }
      }
    }
  }

  group "video" {
    count = 1

    network {
      port "http" {
        to = 9100
      }
    }

    # One worker at a time; the next one starts after the previous drained and the new one is ready (models
    # warm: healthy_deadline leaves time for a cold download).
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "30s"
      healthy_deadline  = "30m"
      progress_deadline = "2h"
      auto_revert       = true
    }

    # A worker that recycles itself (liveness.recycle_after_jobs, recycle_above_*_mb) drains and exits 0
    # to be started afresh, and one whose /health reports a stalled job is restarted (check_restart; that
    # restart still waits for kill_timeout): restarts are routine, so they never fail the allocation.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "5s"
      mode     = "delay"
    }

    # scratch_dir lives in the allocation's data directory: a restarted task (same allocation) sweeps what
    # a crashed one left and aborts its open multipart uploads; sticky keeps it for a replacement
    # allocation on the same client.
    ephemeral_disk {
      size   = 51200
      sticky = true
    }

    # The manifest's cache_dir, shared by the workers of a client: s3:// model files are downloaded once
    # (locked) and verified.
    volume "model-cache" {
      type   = "host"
      source = "ainern2d-model-cache"
    }

    service {
      name = "ainern2d-worker-video"
      port = "http"
      tags = ["video", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"

        # /health answers from the start (before warm-up); a worker that stops answering is restarted.
        check_restart {
          limit = 6
          grace = "60s"
        }
      }

      # 200 while the broker is connected, the store reachable, the worker accepting work and its outcomes
      # going through; 503 while it warms up or drains.
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "worker" {
      driver = "docker"
      user   = "1000"

      config {
        image           = "registry.example.com/ainern2d/worker-comfyui:0.1.0"
        args            = ["run"]
        ports           = ["http"]
        runtime         = "nvidia"
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
          tmpfs_options {
            size = 2147483648
          }
        }
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "3660s"

      volume_mount {
        volume      = "model-cache"
        destination = "/var/cache/ainern2d/models"
      }

      env {
        AINERN2D_WORKER_CONFIG    = "/local/worker.toml"
        AINERN2D_WORKER_WORKER_ID = "${node.unique.name}-video-${NOMAD_ALLOC_INDEX}"
        HOME                      = "/tmp"
      }

      template {
        destination = "local/worker.toml"
        change_mode = "restart"
        data        = <<-EOT
          scratch_dir = "/alloc/data/scratch"

          [broker]
          prefix = "{{ keyOrDefault "ainern2d/broker/prefix" "ainern2d" }}"

          [jobs]
          kinds = ["video"]
          backend = "comfyui"
          max_runtime_s = { video = 3600 }

          [jobs.slots]
          video = {{ keyOrDefault "ainern2d/worker/video/slots" "1" }}

          [store]
          endpoint = "{{ keyOrDefault "ainern2d/store/endpoint" "http://minio.service.consul:9000" }}"
          bucket = "{{ keyOrDefault "ainern2d/store/bucket" "ainern2d-outputs" }}"

          [http]
          listen = "0.0.0.0:9100"

          [shutdown]
          # The longest job (jobs.max_runtime_s) may finish; kill_timeout is this + 60 s.
          grace_s = 3600

          # ComfyUI as the worker's child in the same container (the worker image with ComfyUI in
          # /opt/ComfyUI): it shares the GPU and is stopped after the drain's last job.
          [comfyui]
          url = "http://127.0.0.1:8188"
          templates = "/local/comfyui"
          prompt_timeout_s = 3600
          command = ["python3", "main.py", "--listen", "127.0.0.1", "--port", "8188", "--input-directory", "/alloc/data/comfyui/input", "--output-directory", "/alloc/data/comfyui/output", "--temp-directory", "/alloc/data/comfyui/temp", "--user-directory", "/alloc/data/comfyui/user"]
          command_dir = "/opt/ComfyUI"
          start_timeout_s = 600

          [log]
          format = "json"
        EOT
      }

      # ComfyUI workflow templates (<name>.json + <name>.toml) from Consul KV under ainern2d/comfyui/, one
      # pair per template; the task waits for the keys.
      template {
        destination = "local/comfyui/wan-i2v.json"
        change_mode = "restart"
        data        = "{{ key \"ainern2d/comfyui/wan-i2v.json\" }}"
      }
      template {
        destination = "local/comfyui/wan-i2v.toml"
        change_mode = "restart"
        data        = "{{ key \"ainern2d/comfyui/wan-i2v.toml\" }}"
      }

      # Secrets from Nomad Variables. With Vault instead:
      #   {{ with secret "kv/data/ainern2d/worker" }}AINERN2D_WORKER_BROKER__URL={{ .Data.data.broker_url }}...{{ end }}
      template {
        destination = "secrets/worker.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/ainern2d-worker" -}}
          AINERN2D_WORKER_BROKER__URL={{ .broker_url }}
          AINERN2D_WORKER_STORE__ACCESS_KEY_ID={{ .s3_access_key_id }}
          AINERN2D_WORKER_STORE__SECRET_ACCESS_KEY={{ .s3_secret_access_key }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 8000
        memory = 49152

        device "nvidia/gpu" {
          count = 1
        }
      }
    }
  }
}
