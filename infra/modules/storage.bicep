// The storage account behind AzureWebJobsStorage: host state (blobs), the Flex Consumption deployment
// container, the two queues the app uses, and the command ledger's table. Shared keys are disabled, so every
// client, the Functions host and the app's own queue client alike, authenticates with the managed identity. With
// vnetEnabled, public network access is off and the app reaches blobs, queues and the table through private
// endpoints (network.bicep).

@description('Name of the storage account (3-24 lower-case letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Region of the storage account.')
param location string

@description('Tags for the storage account.')
param tags object = {}

@description('Replication of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Blob container the Flex Consumption plan deploys the app package to.')
param deploymentContainerName string

@description('Queue the HTTP functions enqueue commands on and the worker is triggered by.')
param commandQueueName string

@description('Queue that dead-lettered commands are moved to.')
param poisonQueueName string

@description('Table of the command ledger (one row per command: status, result, idempotency).')
param ledgerTableName string

@description('True: no public network access; the app comes in through private endpoints (network.bicep).')
param vnetEnabled bool = false

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // checkov:skip=CKV_AZURE_206: Replication is the deployer's choice (storageSkuName, default Standard_LRS): the account holds host state, the app package and in-flight commands, all tied to the app's own region; pick Standard_GRS or Standard_GZRS where losing in-flight commands in a regional outage is not acceptable.
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    // Identity-based access only: no account keys, no SAS signed with them, no anonymous blobs.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // checkov:skip=CKV_AZURE_35: [vnetEnabled=false] Flex Consumption without virtual network integration reaches its host storage over the public endpoint, so a default-deny firewall would stop the app; access is by Entra identity only (allowSharedKeyAccess is false). vnetEnabled=true denies by default.
    // checkov:skip=CKV_AZURE_59: [vnetEnabled=false] Same reason as CKV_AZURE_35: public network access is needed by the app without a virtual network; shared keys and anonymous blob access are disabled. vnetEnabled=true turns it off.
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource commandQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: commandQueueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: ledgerTableName
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output ledgerTableName string = ledgerTable.name
output deploymentContainerName string = deploymentContainer.name
output commandQueueName string = commandQueue.name
output poisonQueueName string = poisonQueue.name
