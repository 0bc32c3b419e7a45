variable "project" {
  description = "Name prefix of every resource."
  type        = string
  default     = "newsrec"
}

variable "environment" {
  description = "Deployment stage (prod, staging)."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "az_count" {
  description = "Availability zones used (RDS Multi-AZ, ElastiCache failover and MWAA need at least 2)."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3
    error_message = "az_count must be 2 or 3."
  }
}

variable "availability_zones" {
  description = "Zones the stack spreads over, named explicitly so a new zone never moves subnets."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; split into public and private subnets per AZ."
  type        = string
  default     = "10.40.0.0/16"
}

variable "domain_name" {
  description = "Public name of the API (api.<domain>) and dashboard (dashboard.<domain>); also the SES sending domain."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate covering api.<domain> and dashboard.<domain>, for the ALB's HTTPS listener."
  type        = string
}

variable "dashboard_allowed_cidrs" {
  description = "Networks allowed to open the dashboard (office / VPN ranges): it shows per-user reading history."
  type        = list(string)
}

variable "alarm_email" {
  description = "Where CloudWatch alarms and drift alerts are sent (the on-call list)."
  type        = string
}

variable "drift_alert_recipients" {
  description = "Recipients of the drift report emails sent through SES."
  type        = list(string)
}

variable "github_repository" {
  description = "owner/name of the repository whose main branch may deploy (GitHub OIDC)."
  type        = string
}

variable "image_tag" {
  description = "Image tag (the git commit SHA) the services run; CI passes it on every deploy."
  type        = string
}

variable "api_min_tasks" {
  description = "API tasks always running (spread over the AZs)."
  type        = number
  default     = 2
}

variable "api_max_tasks" {
  description = "Upper bound for API autoscaling."
  type        = number
  default     = 20
}

variable "api_p99_latency_threshold_s" {
  description = "ALB-measured p99 latency of the API above which it scales out and the latency alarm fires."
  type        = number
  default     = 0.1
}

variable "mwaa_airflow_version" {
  description = "Airflow version of the managed environment (the DAGs use only the Airflow 3 task SDK)."
  type        = string
  default     = "3.0.6"
}

variable "raw_retention_days" {
  description = "Days raw click drops are kept before deletion (GDPR storage limitation; see docs/deployment.md)."
  type        = number
  default     = 90
}

variable "log_retention_days" {
  description = "Days application and audit logs are kept."
  type        = number
  default     = 365
}

variable "fallback_rate_threshold_pct" {
  description = "Share of recommendations served by a fallback path above which the API alarm fires."
  type        = number
  default     = 25
}

variable "dask_workers" {
  description = "Dask workers (one ECS task each); 0 runs no scheduler and no worker (the steps run in one process). Sizes: docs/deployment.md, \"Scaling model\"."
  type        = number
  default     = 0

  validation {
    condition     = var.dask_workers >= 0 && floor(var.dask_workers) == var.dask_workers
    error_message = "dask_workers must be a whole number, 0 or more."
  }
}

variable "dask_worker_cpu" {
  description = "CPU units of each Dask worker task (1024 = 1 vCPU); the worker runs one thread per vCPU."
  type        = number
  default     = 4096

  validation {
    condition     = contains([1024, 2048, 4096, 8192, 16384], var.dask_worker_cpu)
    error_message = "dask_worker_cpu must be a Fargate size of whole vCPUs: 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "dask_worker_memory" {
  description = "Memory (MiB) of each Dask worker task; the worker's --memory-limit is 1 GiB less."
  type        = number
  default     = 16384

  validation {
    condition     = var.dask_worker_memory >= 2 * var.dask_worker_cpu && var.dask_worker_memory <= 8 * var.dask_worker_cpu
    error_message = "Fargate allows 2 to 8 GiB per vCPU: dask_worker_memory between 2x and 8x dask_worker_cpu."
  }
}

variable "dask_scheduler_memory" {
  description = "Memory (MiB) of the Dask scheduler task (1 vCPU): it relays every result a client gathers, so it must hold the largest one."
  type        = number
  default     = 8192

  validation {
    condition     = var.dask_scheduler_memory >= 2048 && var.dask_scheduler_memory <= 8192
    error_message = "With 1 vCPU, Fargate allows 2048 to 8192 MiB."
  }
}

variable "dask_dashboard_cidrs" {
  description = "Operator networks (VPN ranges) allowed to the Dask scheduler's HTTP port 8787; empty: none."
  type        = list(string)
  default     = []
}

variable "users_store_node_type" {
  description = "Node of the users' state Redis (never evicts): ~1.6 GB per million readers per index version, two versions at a time (docs/deployment.md). cache.t4g.medium (3 GiB) holds Globo's 323k readers."
  type        = string
  default     = "cache.t4g.medium"
}
