# The hub on Nomad (docker driver), registered in Consul as `ainern2d-hub`.
#
# Before the first run, store its secrets in Nomad Variables (readable by this job's tasks):
#   nomad var put nomad/jobs/ainern2d-hub admin_token=... broker_url=amqp://... database_url=postgres://...
# Optional Consul KV keys (defaults below): ainern2d/broker/prefix, ainern2d/hub/alerts_webhook_url.
#   nomad job run deploy/nomad/ainern2d-hub.nomad.hcl
job "ainern2d-hub" {
  datacenters = ["dc1"]
  type        = "service"

  group "hub" {
    # One hub: its policy engine keeps its windows in memory, and two would send every decision twice.
    count = 1

    network {
      port "http" {
        to = 9200
      }
    }

    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "5m"
      auto_revert      = true
    }

    # Consul drops the service, then the hub gets SIGTERM: callers that resolved it a moment ago still get
    # an answer.
    shutdown_delay = "5s"

    service {
      name = "ainern2d-hub"
      port = "http"
      tags = ["http", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"

        # A hub that stops answering /health is restarted.
        check_restart {
          limit = 6
          grace = "30s"
        }
      }

      # 200 while both broker sessions and the database are up.
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "hub" {
      driver = "docker"
      user   = "1000"

      config {
        image           = "registry.example.com/ainern2d/hub:0.1.0"
        args            = ["run"]
        ports           = ["http"]
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]
      }

      # The hub commits the batch in hand and closes its HTTP server within this.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      env {
        AINERN2D_HUB_CONFIG = "/local/hub.toml"
      }

      template {
        destination = "local/hub.toml"
        change_mode = "restart"
        data        = <<-EOT
          [broker]
          prefix = "{{ keyOrDefault "ainern2d/broker/prefix" "ainern2d" }}"

          [http]
          listen = "0.0.0.0:9200"

          [api]
          admin_token_file = "/secrets/admin-token"

          [alerts]
          webhook_url = "{{ keyOrDefault "ainern2d/hub/alerts_webhook_url" "" }}"

          [policy.backlog]
          threshold = 2000
          per_replica = 500

          [log]
          format = "json"
        EOT
      }

      # Secrets from Nomad Variables. With Vault instead:
      #   {{ with secret "kv/data/ainern2d/hub" }}AINERN2D_HUB_BROKER__URL={{ .Data.data.broker_url }}...{{ end }}
      template {
        destination = "secrets/hub.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/ainern2d-hub" -}}
          AINERN2D_HUB_BROKER__URL={{ .broker_url }}
          AINERN2D_HUB_DATABASE__URL={{ .database_url }}
          {{- end }}
        EOT
      }

      template {
        destination = "secrets/admin-token"
        perms       = "0400"
        uid         = 1000
        gid         = 1000
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/ainern2d-hub\" }}{{ .admin_token }}{{ end }}"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
