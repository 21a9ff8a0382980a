// The data namespace.
export { type BatchTarget, type Dataset, idx, type TargetParts, type IdxOptions, relabel, type Sample, split, type SplitOptions, subset, type SubsetOptions, tensorDataset, type TensorDatasetOptions } from './dataset';
export { readIdx, type IdxArray } from './idx';
export { type Augment, imageFolder, type ImageFolderOptions, loadImage, type LoadImageOptions, readImage } from './images';
export { Loader, loader, type LoaderBatch, type LoaderOptions } from './loader';
export { textDataset, type TextDatasetOptions, textFormatOf } from './text';
export { coco, type DetectionAugment, type DetectionDataOptions, type DetectionInput, type DetectionTarget, voc } from './detection';
export { decodeRle, polygonMask, type Rle } from './masks';
export { segmentation, type SegmentationAugment, type SegmentationDataOptions } from './segmentation';
