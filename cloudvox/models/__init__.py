"""Models: VoxelNet (3D CNN on voxel descriptors) and AtomCloudNet (e3nn point convolutions)."""
