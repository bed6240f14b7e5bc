// Deploys the iTwin event functions: a Python 3.11 function app on the Flex Consumption plan, running as a
// user-assigned managed identity, with identity-only storage (queues itwin-commands and
// itwin-commands-poison), Key Vault references for the secrets, and OpenTelemetry export to
// Application Insights with Entra authentication; an operators' workbook and alerts over that telemetry; and,
// with vnetEnabled, a virtual network with private endpoints for storage and Key Vault.
//
// azd: `azd up` (parameters from main.parameters.json). Azure CLI:
//   az deployment group create -g <group> -f infra/main.bicep -p environmentName=<name> itwinClientId=<id> ...
// Each app setting the code reads (shared/settings.py SETTINGS) is set in `appSettings` below;
// tests/infra checks that against the code.

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME). Resource names are derived from it.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string = resourceGroup().location

@description('Extra tags for every resource.')
param tags object = {}

@description('Flex Consumption instance memory in MB. 512 is measured to fit (docs/deployment.md, Cost): the app\'s process peaked at 89 MB in the soak; 2048 or 4096 bill four or eight times as much per second.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Flex Consumption scale-out ceiling (40 is the lowest the platform accepts). The code itself honours the iTwin Platform rate limits; this only bounds cost.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Replication of the storage account behind AzureWebJobsStorage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Deploy a virtual network: the app integrates with it, storage (blob, queue, table) and Key Vault are reached through private endpoints, and their public network access is off. The app\'s HTTP endpoints stay public (the iTwin Platform delivers webhooks from the internet).')
param vnetEnabled bool = false

@description('E-mail address the alerts are sent to. Empty: the alerts fire in Azure Monitor without notifying anyone.')
param alertEmail string = ''

@description('KEY_VAULT_NAME_SALT: names the key vault along with the environment. A vault that `azd down` deleted keeps its name for 90 days (soft delete with purge protection), so azd sets a new salt after each teardown (azure.yaml, postdown hook) and the next deployment creates a vault under another name. Empty: the name deployments had before a teardown.')
param keyVaultNameSalt string = ''

@minLength(1)
@description('ITWIN_CLIENT_ID: client id of the iTwin service application.')
param itwinClientId string

@secure()
@minLength(1)
@description('ITWIN_CLIENT_SECRET: client secret of the iTwin service application. Stored in Key Vault; the app reads it through a Key Vault reference.')
param itwinClientSecret string

@secure()
@minLength(32)
@description('ITWIN_WEBHOOK_SECRET: the secret (at least 32 characters) given to the iTwin Platform when the webhook is created. Stored in Key Vault.')
param itwinWebhookSecret string

@secure()
@minLength(32)
@description('ITWIN_WEBHOOK_SECRET_PREVIOUS: the webhook secret being replaced during a change of secret; otherwise the same value as itwinWebhookSecret. Stored in Key Vault.')
param itwinWebhookSecretPrevious string

@description('ITWIN_AUTHORITY: token service (IMS) root URL.')
param itwinAuthority string = 'https://ims.bentley.com'

@description('ITWIN_SCOPE: scope requested for service tokens.')
param itwinScope string = 'itwin-platform'

@description('ITWIN_API_URL: iTwin Platform API root URL.')
param itwinApiUrl string = 'https://api.bentley.com'

@description('ITWIN_EXPORT_CONNECTION_NAME: when set, iModels.iModelCreated.v1 creates an Export connection with this name.')
param itwinExportConnectionName string = ''

@description('ITWIN_CLASH_TEST_IDS: comma-separated Clash Detection test ids run on iModels.namedVersionCreated.v1.')
param itwinClashTestIds string = ''

@description('ITWIN_CLASH_V2_TEST_IDS: comma-separated Clash Detection v2 test ids run on iModels.namedVersionCreated.v1.')
param itwinClashV2TestIds string = ''

@description('ITWIN_CLASH_V2_CHANGES_TEST_IDS: comma-separated Clash Detection v2 test ids run on every iModels.changesReady.v1.')
param itwinClashV2ChangesTestIds string = ''

@description('ITWIN_EVENT_RULES: JSON document that replaces the default event rules (empty keeps the defaults).')
param itwinEventRules string = ''

@description('ITWIN_RATE_LIMITS: calls per second the app allows itself per API, e.g. export=8,contextcapture=8 (empty keeps the built-in pacing, including the documented Clash Detection limit).')
param itwinRateLimits string = ''

@description('ITWIN_SHARED_PACING: on: every instance paces its calls by one schedule in the app\'s table (falling back to its own pacing while the table fails); off: each instance paces itself.')
@allowed(['on', 'off'])
param itwinSharedPacing string = 'off'

@description('ITWIN_TIER_LIMITS: the subscription\'s limits across all APIs, paced by the shared schedule, e.g. 5000/m (Standard) or 500/m,5000/h (Community); off: none.')
param itwinTierLimits string = '500/m,5000/h'

@description('ITWIN_MAX_RETRY_AFTER: the longest wait a Retry-After header may impose (longer ones are cut to this and logged), 1m to 24h.')
param itwinMaxRetryAfter string = '15m'

@description('ITWIN_MAX_ATTEMPTS: attempts per queue message before it is dead-lettered.')
@minValue(1)
@maxValue(100)
param itwinMaxAttempts int = 8

@description('ITWIN_MAX_COMMAND_AGE: how long a command may keep waiting on rate limits or a busy connection before it is dead-lettered, e.g. 24h, 90m, 2d.')
param itwinMaxCommandAge string = '24h'

@description('ITWIN_LEDGER_RETENTION: how long the command ledger keeps each command (and an idempotency key stays taken), in whole days, e.g. 7d.')
param itwinLedgerRetention string = '7d'

// The queue names the code uses (shared/settings.py COMMAND_QUEUE and POISON_QUEUE).
var commandQueueName = 'itwin-commands'
var poisonQueueName = 'itwin-commands-poison'
// The command ledger's table (shared/ledger.py LEDGER_TABLE).
var ledgerTableName = 'itwincommands'

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var functionAppName = 'func-${resourceToken}'
// Only the vault's name takes the salt: the app's host name, and so the webhook URL registered with the iTwin
// Platform, stays the same across a teardown.
var keyVaultName = empty(keyVaultNameSalt) ? 'kv-${resourceToken}' : 'kv-${uniqueString(resourceToken, keyVaultNameSalt)}'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: allTags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: allTags
    skuName: storageSkuName
    deploymentContainerName: 'app-package'
    commandQueueName: commandQueueName
    poisonQueueName: poisonQueueName
    ledgerTableName: ledgerTableName
    vnetEnabled: vnetEnabled
  }
}

module keyVault 'modules/key-vault.bicep' = {
  name: 'keyVault'
  params: {
    name: keyVaultName
    location: location
    tags: allTags
    vnetEnabled: vnetEnabled
    itwinClientSecret: itwinClientSecret
    itwinWebhookSecret: itwinWebhookSecret
    itwinWebhookSecretPrevious: itwinWebhookSecretPrevious
  }
}

module network 'modules/network.bicep' = if (vnetEnabled) {
  name: 'network'
  params: {
    name: 'vnet-${resourceToken}'
    location: location
    tags: allTags
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'roleAssignments'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
  }
}

// Every setting the code reads, plus what the Functions host and the Python worker need.
var appSettings = {
  // Host storage and the app's own queue client: identity-based, no connection string, no key.
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  // OpenTelemetry export to Application Insights, authenticated as the identity (local auth is off).
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identity.outputs.clientId}'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // The iTwin settings; the two secrets are Key Vault references, never values.
  ITWIN_CLIENT_ID: itwinClientId
  ITWIN_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.clientCredentialUri})'
  ITWIN_AUTHORITY: itwinAuthority
  ITWIN_SCOPE: itwinScope
  ITWIN_API_URL: itwinApiUrl
  ITWIN_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.webhookSigningUri})'
  ITWIN_WEBHOOK_SECRET_PREVIOUS: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.previousWebhookSigningUri})'
  ITWIN_EXPORT_CONNECTION_NAME: itwinExportConnectionName
  ITWIN_CLASH_TEST_IDS: itwinClashTestIds
  ITWIN_CLASH_V2_TEST_IDS: itwinClashV2TestIds
  ITWIN_CLASH_V2_CHANGES_TEST_IDS: itwinClashV2ChangesTestIds
  ITWIN_EVENT_RULES: itwinEventRules
  ITWIN_RATE_LIMITS: itwinRateLimits
  ITWIN_SHARED_PACING: itwinSharedPacing
  ITWIN_TIER_LIMITS: itwinTierLimits
  ITWIN_MAX_RETRY_AFTER: itwinMaxRetryAfter
  ITWIN_MAX_ATTEMPTS: string(itwinMaxAttempts)
  ITWIN_MAX_COMMAND_AGE: itwinMaxCommandAge
  ITWIN_LEDGER_RETENTION: itwinLedgerRetention
}

module functionApp 'modules/function-app.bicep' = {
  name: 'functionApp'
  params: {
    planName: 'plan-${resourceToken}'
    appName: functionAppName
    location: location
    tags: allTags
    serviceName: 'api'
    identityId: identity.outputs.id
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: appSettings
    // The network module is conditional: a safe dereference reads its output only when it is deployed, and the
    // reference alone makes the app wait for it (private endpoints and DNS in place before the app starts).
    virtualNetworkSubnetId: network.?outputs.appSubnetId ?? ''
  }
  // The identity must hold its roles before the app first starts: the host reads its storage, and the
  // Key Vault references are resolved, with that identity (through the private endpoints, with vnetEnabled).
  dependsOn: [
    roleAssignments
  ]
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    tags: allTags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    namePrefix: resourceToken
    location: location
    tags: allTags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    storageAccountName: storage.outputs.name
    alertEmail: alertEmail
  }
}

output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_HOST_NAME string = functionApp.outputs.defaultHostName
@description('Callback URL to register with the iTwin Platform (POST https://api.bentley.com/webhooks).')
output ITWIN_WEBHOOK_URL string = 'https://${functionApp.outputs.defaultHostName}/api/webhooks/itwin'
output COMMAND_QUEUE string = storage.outputs.commandQueueName
output POISON_QUEUE string = storage.outputs.poisonQueueName
output LEDGER_TABLE string = storage.outputs.ledgerTableName
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
@description('The operators\' workbook (portal: the Application Insights resource, Workbooks).')
output AZURE_WORKBOOK_ID string = workbook.outputs.id
@description('The app\'s outbound address with vnetEnabled (the NAT gateway\'s public IP); empty without.')
output OUTBOUND_IP_ADDRESS string = network.?outputs.outboundIpAddress ?? ''
