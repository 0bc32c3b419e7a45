output "alb_dns_name" {
  description = "Point api.<domain> and dashboard.<domain> (CNAME / alias) here."
  value       = aws_lb.main.dns_name
}

output "ecr_repositories" {
  description = "Image repositories CI pushes to, by image."
  value       = { for name, repo in aws_ecr_repository.images : name => repo.repository_url }
}

output "buckets" {
  description = "Bucket names: raw drops, MLflow artifacts, DVC remote, MWAA DAGs."
  value       = { for name, bucket in local.bucket : name => bucket.id }
}

output "deploy_role_arn" {
  description = "Role the deploy workflow assumes through GitHub OIDC (set as the AWS_DEPLOY_ROLE_ARN secret)."
  value       = aws_iam_role.deploy.arn
}

output "codedeploy" {
  description = "Application and deployment group of the API canary."
  value = {
    application      = aws_codedeploy_app.api.name
    deployment_group = aws_codedeploy_deployment_group.api.deployment_group_name
  }
}

output "mlflow_url" {
  description = "MLflow tracking URI inside the VPC."
  value       = local.mlflow_url
}

output "mwaa_webserver_url" {
  description = "Airflow UI (private: reach it through the VPN)."
  value       = aws_mwaa_environment.main.webserver_url
}

output "dask_scheduler_address" {
  description = "The Dask scheduler inside the VPC (params dask.scheduler, NEWSREC__DASK__SCHEDULER), for clients in its security group that mount the data root."
  value       = local.dask_scheduler_address
}

output "data_root" {
  description = "The data root the Dask workers read (EFS file system and access point), mounted at /app/data."
  value = {
    file_system_id  = aws_efs_file_system.data.id
    access_point_id = aws_efs_access_point.data.id
  }
}
