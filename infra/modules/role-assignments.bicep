// What the app's identity may do, and nothing more. Each grant is scoped to the one resource it is for, and
// each assignment name is a guid() of scope, principal and role, so a redeploy finds and keeps the same one.
//
// - Storage Blob Data Owner on the storage account: the host's blob state (keys, leases) and the Flex
//   Consumption deployment container.
// - Storage Queue Data Contributor on the storage account: the queue trigger, plus the app's own
//   rescheduling (update message visibility) and dead-lettering (send to the poison queue, delete the
//   original). The narrower Reader / Message Processor roles cannot update or send, so they would not work.
// - Storage Table Data Contributor on the storage account: the command ledger's rows (insert, read, update,
//   delete by day). The Reader role cannot write, so it would not work.
// - Monitoring Metrics Publisher on Application Insights: telemetry ingestion with Entra auth
//   (local auth is disabled there).
// - Key Vault Secrets User on the vault: reading the two secrets behind the Key Vault references.

@description('Principal (object) id of the app\'s user-assigned managed identity.')
param principalId string

@description('Name of the storage account behind AzureWebJobsStorage.')
param storageAccountName string

@description('Name of the Application Insights resource.')
param applicationInsightsName string

@description('Name of the key vault holding the iTwin secrets.')
param keyVaultName string

// Built-in role definition ids, keyed by the role's name (they are the same in every Azure cloud).
var roleIds = {
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
  'Key Vault Secrets User': '4633458b-17de-408a-b874-0445c86b69e6'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds['Storage Blob Data Owner'])
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds['Storage Blob Data Owner'])
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host blob state and the Flex Consumption deployment container.'
  }
}

resource storageQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds['Storage Queue Data Contributor'])
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds['Storage Queue Data Contributor'])
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Queue trigger, rescheduling (visibility updates) and dead-lettering of iTwin commands.'
  }
}

resource storageTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds['Storage Table Data Contributor'])
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds['Storage Table Data Contributor'])
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'The command ledger: one row per command, its status and result.'
  }
}

resource monitoringMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, roleIds['Monitoring Metrics Publisher'])
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds['Monitoring Metrics Publisher'])
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'OpenTelemetry export to Application Insights with Entra authentication.'
  }
}

resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roleIds['Key Vault Secrets User'])
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds['Key Vault Secrets User'])
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Key Vault references for ITWIN_CLIENT_SECRET and ITWIN_WEBHOOK_SECRET.'
  }
}
