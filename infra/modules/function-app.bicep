// The Flex Consumption (FC1) plan and the Linux Python function app on it, running as the user-assigned
// identity: host storage, the deployment container and Key Vault references all authenticate with it.
//
// Flex Consumption rejects or ignores several classic siteConfig properties (linuxFxVersion, alwaysOn,
// ftpsState, functionAppScaleLimit, ...) and the app settings FUNCTIONS_WORKER_RUNTIME /
// FUNCTIONS_EXTENSION_VERSION / WEBSITE_RUN_FROM_PACKAGE: runtime, scale and deployment live in
// functionAppConfig instead, and none of those properties or settings is set here.

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app (its default host name is derived from it).')
param appName string

@description('Region of the plan and the app.')
param location string

@description('Tags for the plan and the app.')
param tags object = {}

@description('azd service name in azure.yaml that deploys its code to this app.')
param serviceName string = 'api'

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Blob endpoint of the storage account holding the deployment container (ends with a slash).')
param storageBlobEndpoint string

@description('Blob container the app package is deployed to.')
param deploymentContainerName string

@description('Instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Scale-out ceiling of the app.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@description('App settings, name to value.')
param appSettings object

@description('Resource id of the subnet for virtual network integration; empty: none (vnetEnabled=false).')
param virtualNetworkSubnetId string = ''

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Zone redundancy for Flex Consumption is offered only in some regions, so setting it here would make the template fail elsewhere; it is left as a per-deployment decision.
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // checkov:skip=CKV_AZURE_17: Callers are the iTwin Platform's webhook deliveries (authenticated by their HMAC signature) and clients holding a function key; neither presents a TLS client certificate.
    clientCertEnabled: false
    // checkov:skip=CKV_AZURE_222: POST /api/webhooks/itwin must be reachable by the iTwin Platform from the internet, with or without vnetEnabled; every other route needs a function key.
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    // With a subnet, all the app's outbound traffic (storage, Key Vault references, the iTwin Platform) goes
    // through the virtual network.
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      // checkov:skip=CKV_AZURE_78: FTP is switched off by the ftp basicPublishingCredentialsPolicies resource below (allow: false); Flex Consumption does not support siteConfig.ftpsState and newer regions reject a template that sets it.
      // checkov:skip=CKV_AZURE_213: App Service health check is meant for plans with always-running instances; this app scales to zero on Flex Consumption, and GET /api/health serves external availability probes instead.
      // checkov:skip=CKV_AZURE_212: A Flex Consumption app scales from zero by design; a minimum instance count (always-ready instances) is a cost decision left out of this template.
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No publishing with user name and password: FTP and the SCM (Kudu) site accept Entra tokens only,
// which is what azd and the Azure CLI deploy with.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
