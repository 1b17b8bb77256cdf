provider "alicloud" {
  access_key = "@FAKE:alibaba-id@"
  secret_key = "@FAKE:alibaba-secret@"
  region     = "cn-hangzhou"
}

resource "azurerm_storage_account" "logs" {
  name                     = "shoplogs"
  connection_string        = "DefaultEndpointsProtocol=https;AccountName=shoplogs;AccountKey=@FAKE:azure-storage@;EndpointSuffix=core.windows.net"
}

variable "client_secret" {
  default = "@FAKE:azure-client@"
}
